"""The web UI (``api.web``) and its admin read-outs (``api.admin_series``) against the real gateway.

Set-up in ``tests/api/conftest.py`` (three miners with real instance processes, the app on
uvicorn). Plain HTTP tests cover ``/admin/stats/hourly``, ``/admin/miners`` and the static
mount; ``test_browser_drives_every_page`` drives the pages in the system's Chromium (Debian's
``chromium`` package, never a browser download) through Playwright. That test is skipped when
Chromium is absent, unless ``CANOPY_REQUIRE_CHROMIUM=1`` (``./run.sh test`` sets it) makes
that a failure. Screenshots land in the test's ``tmp_path`` and, when ``CANOPY_SCREENSHOTS``
names a folder, are copied there.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from sqlalchemy.ext.asyncio import create_async_engine

from api.admin_series import hourly_counts
from api.keys import KeyStore
from api.requestlog import RequestRecord
from store.api_tables import RequestLog
from api.web import STATIC
from tests.support.gateway import MODEL, new_key
from tests.support.postgres_server import needs_postgres
from tests.validator.chutes.fake_llm import completion_words
from store.queries import bulk_insert

pytestmark = pytest.mark.asyncio(loop_scope="module")
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


async def get(gateway, key: str | None, path: str, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        return await client.get(path, headers=headers, **kwargs)


# --- the admin read-outs ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/stats/hourly", "/admin/miners"])
async def test_read_outs_need_an_admin_key(gateway, path):
    user = await new_key(gateway, f"web-user-{path.rsplit('/', 1)[1]}")
    assert (await get(gateway, None, path)).status_code == 401
    assert (await get(gateway, "cnp_not-a-key", path)).status_code == 401
    refused = await get(gateway, user, path)
    assert refused.status_code == 403 and refused.json()["error"]["type"]


async def test_hourly_counts_requests_and_errors_per_clock_hour(gateway):
    admin = await new_key(gateway, "web-hourly-admin", admin=True)
    info = await gateway.keys.get("web-hourly-admin")
    now = time.time()
    rows = [RequestRecord(id=f"req_web_{i}", route="/v1/chat/completions", key_id=info.id, status=status).row(False)
            for i, status in enumerate([200, 200, 502, 200, 429])]
    ages = [2 * 3600, 2 * 3600, 2 * 3600, 60, 30 * 3600]  # the last one is outside 24h
    for row, age in zip(rows, ages):
        row["created_at"] = now - age
    await bulk_insert(gateway.store.engine, RequestLog.__table__, rows)

    answer = await get(gateway, admin, "/admin/stats/hourly", params={"since": "24h", "key": "web-hourly-admin"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and body["bucket_s"] == 3600 and body["key_id"] == info.id
    data = body["data"]
    assert len(data) in (24, 25)  # the window's first clock hour starts before "24h ago"
    assert [bucket["start"] for bucket in data] == [data[0]["start"] + 3600 * i for i in range(len(data))]
    assert data[0]["start"] % 3600 == 0 and data[0]["start"] <= body["since"] < data[0]["start"] + 3600
    assert all(set(bucket) == {"start", "requests", "errors"} for bucket in data)
    by_start = {bucket["start"]: bucket for bucket in data}

    def bucket_of(age: float) -> dict:
        return by_start[(now - age) // 3600 * 3600]

    assert bucket_of(2 * 3600) == {"start": (now - 2 * 3600) // 3600 * 3600, "requests": 3, "errors": 1}
    assert bucket_of(60)["requests"] >= 1  # the admin's own request may share the hour
    assert sum(bucket["requests"] for bucket in data) == 4 + (bucket_of(60)["requests"] - 1)
    assert sum(bucket["errors"] for bucket in data) == 1

    short = (await get(gateway, admin, "/admin/stats/hourly", params={"since": "1h"})).json()["data"]
    assert len(short) in (1, 2)
    for since in ("40d", "soon", "-1h"):
        refused = await get(gateway, admin, "/admin/stats/hourly", params={"since": since})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "since", since
    unknown = await get(gateway, admin, "/admin/stats/hourly", params={"key": "nobody"})
    assert unknown.status_code == 404


async def _hourly_on(engine) -> None:
    """hourly_counts on ``engine``: rows at known ages land in their clock hour (floor, never rounded)."""
    now = 1_699_999_200.0 + 1800  # half past an hour (1_699_999_200 is 472222 hours)
    ages = [1, 1799, 1801, 3599.5, 3600 * 5, 3600 * 30]
    rows = [RequestRecord(id=f"req_hourly_{i}", route="/v1/models", status=500 if i == 1 else 200).row(False)
            for i in range(len(ages))]
    for row, age in zip(rows, ages):
        row["created_at"] = now - age
    await KeyStore(engine).create_tables()
    await bulk_insert(engine, RequestLog.__table__, rows)
    data = await hourly_counts(engine, since=now - 24 * 3600, until=now)
    assert len(data) == 25 and data[0]["start"] == now - 1800 - 24 * 3600
    counts = {bucket["start"]: (bucket["requests"], bucket["errors"]) for bucket in data if bucket["requests"]}
    this_hour = now - 1800
    assert counts == {this_hour: (2, 1), this_hour - 3600: (2, 0), this_hour - 5 * 3600: (1, 0)}


async def test_hourly_counts_on_sqlite(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'hourly.sqlite'}")
    try:
        await _hourly_on(engine)
    finally:
        await engine.dispose()


@needs_postgres[0]
@needs_postgres[1]
async def test_hourly_counts_on_postgres(postgres_url):
    engine = create_async_engine(postgres_url)
    try:
        await _hourly_on(engine)
    finally:
        await engine.dispose()


async def test_miners_lists_uids_devices_chutes_scores_and_weights(gateway):
    admin = await new_key(gateway, "web-miners-admin", admin=True)
    body = (await get(gateway, admin, "/admin/miners")).json()
    assert body["object"] == "list" and body["block"] == 10 and body["refreshed"] is True
    miners = {miner["uid"]: miner for miner in body["data"]}
    assert sorted(miners) == [1, 2, 3]
    first = miners[1]
    assert set(first) == {"uid", "hotkey", "incentive", "stake", "verified", "devices", "chutes", "score", "weight"}
    assert first["hotkey"] == gateway.hotkeys[0] and first["verified"] is True
    assert [device["uuid"] for device in first["devices"]] == ["dev-a"] and first["devices"][0]["ok"] is True
    assert [chute["model"] for chute in first["chutes"]] == [MODEL]
    assert first["chutes"][0]["ready_instances"] >= 1 and first["chutes"][0]["in_flight"] == 0
    assert first["score"] == pytest.approx(0.5) and miners[2]["score"] == pytest.approx(0.1)
    assert miners[3]["verified"] is False and miners[3]["devices"] == []
    assert sorted(chute["model"] for chute in miners[3]["chutes"]) == ["fake-model", "flaky-model"]
    assert first["incentive"] == pytest.approx(0.1)

    await gateway.store.record_weights(block=12, ok=True, uids=[1, 2, 3], weights=[0.6, 0.3, 0.1], version_key=1,
                                       commit_reveal=False, message="", now=time.time())
    body = (await get(gateway, admin, "/admin/miners")).json()
    assert body["weights_block"] == 12
    assert [miner["weight"] for miner in body["data"]] == pytest.approx([0.6, 0.3, 0.1])


# --- the static mount --------------------------------------------------------------------------------


async def test_ui_is_served_locally_and_kept_out_of_the_openapi_document(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        redirect = await client.get("/ui")
        assert redirect.status_code in (307, 308) and redirect.headers["location"].endswith("/ui/")
        index = await client.get("/ui/")
        assert index.status_code == 200 and "text/html" in index.headers["content-type"]
        script = await client.get("/ui/app.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert (await client.get("/ui/style.css")).headers["content-type"].startswith("text/css")
        assert (await client.get("/ui/nothing.html")).status_code == 404
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert not any(path.startswith("/ui") for path in paths)
    assert {"/admin/stats/hourly", "/admin/miners"} <= set(paths)
    for page in STATIC.iterdir():  # everything is served from here: no CDN, no external URL
        text = page.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), page.name
        if page.suffix == ".html":
            assert '<html lang="en">' in text and 'src="app.js"' in text and 'href="style.css"' in text


# --- the pages in a real browser -----------------------------------------------------------------------


def _chromium() -> str:
    found = next((path for path in CHROMIUM_PATHS if os.access(path, os.X_OK)), None) or shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CANOPY_REQUIRE_CHROMIUM") == "1":
        pytest.fail("CANOPY_REQUIRE_CHROMIUM=1 but no chromium is installed (apt-get install chromium)")
    pytest.skip("no system chromium (apt-get install chromium; ./run.sh test installs it)")


async def test_browser_drives_every_page(gateway, tmp_path):
    executable = _chromium()
    playwright_api = pytest.importorskip("playwright.async_api")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    admin = await new_key(gateway, "web-browser-admin", admin=True)
    prompt = "which trees grow near the river"

    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True,
                                                   args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            expect = playwright_api.expect

            # Keys: paste the admin key once, create a key, edit it, disable it.
            await page.goto(gateway.url + "/ui/keys.html")
            await expect(page.locator("#status")).to_contain_text("Paste an API key")
            await page.fill("#api-key", admin)
            await page.click("#key-form button[type=submit]")
            await expect(page.locator('#keys-table tr[data-name="web-browser-admin"]')).to_be_visible()
            await page.fill("#c-name", "web-made")
            await page.fill("#c-credits", "5")
            await page.fill("#c-limits", "30/60s")
            await page.click("#create-form button[type=submit]")
            await expect(page.locator("#created-key")).to_have_text(re.compile(r"^cnp_"))
            made = page.locator('#keys-table tr[data-name="web-made"]')
            await expect(made).to_contain_text("30/60s")
            await made.get_by_role("button", name="Edit web-made").click()
            await page.fill("#e-credits", "7")
            await page.click("#edit-form button[type=submit]")
            await expect(made.locator("td").nth(2)).to_have_text("7")
            await made.get_by_role("button", name="Disable web-made").click()
            await expect(made).to_contain_text("disabled")
            await expect(made.get_by_role("button", name="Enable web-made")).to_be_visible()
            await page.screenshot(path=shots / "keys.png", full_page=True)
            created = await gateway.keys.get("web-made")
            assert created.credits == 7 and [str(rule) for rule in created.rate_limits] == ["30/60s"]

            # Chat: the model from /v1/models, the strategy as x-canopy-strategy, the answer streamed in.
            await page.goto(gateway.url + "/ui/chat.html")
            await expect(page.locator("#model option")).to_have_text([MODEL])
            await page.select_option("#strategy", "uids")
            await page.fill("#strategy-arg", "2")
            await page.fill("#prompt", prompt)
            await page.click("#send")
            answer = page.locator("#messages li.assistant[data-done=true]")
            await expect(answer.locator(".content")).to_have_text("".join(completion_words(prompt, None, 16)))
            await expect(answer.locator(".who")).to_have_text("Assistant (miner uid 2)")
            await page.screenshot(path=shots / "chat.png", full_page=True)

            # Logs: the chat request is there, filtered by key and status.
            await page.goto(gateway.url + "/ui/logs.html")
            await page.fill("#l-key", "web-browser-admin")
            await page.fill("#l-status", "200")
            await page.click("#logs-form button[type=submit]")
            chat_row = page.locator("#logs-table tbody tr", has_text="/v1/chat/completions")
            await expect(chat_row).to_have_count(1)
            await expect(chat_row).to_contain_text("uids:2")
            await page.screenshot(path=shots / "logs.png", full_page=True)

            # Stats: totals and the hourly chart (one requests bar and one errors bar per hour).
            await page.goto(gateway.url + "/ui/stats.html")
            chart = page.locator("#chart svg#stats-chart")
            await expect(chart).to_be_visible()
            bars = await chart.locator("rect.requests").count()
            assert bars in (24, 25) and await chart.locator("rect.errors").count() == bars
            await expect(page.locator("#totals")).to_contain_text("Requests")
            await page.screenshot(path=shots / "stats.png", full_page=True)

            # Miners: the fixture's three miners.
            await page.goto(gateway.url + "/ui/miners.html")
            rows = page.locator("#miners-table tbody tr")
            await expect(rows).to_have_count(3)
            await expect(page.locator('#miners-table tr[data-uid="1"]')).to_contain_text(MODEL)
            await expect(page.locator('#miners-table tr[data-uid="1"]')).to_contain_text("dev-a")
            await page.screenshot(path=shots / "miners.png", full_page=True)
            assert problems == []
        finally:
            await browser.close()
            target = os.environ.get("CANOPY_SCREENSHOTS")
            if target:
                Path(target).mkdir(parents=True, exist_ok=True)
                for shot in shots.iterdir():
                    shutil.copy(shot, Path(target) / shot.name)
