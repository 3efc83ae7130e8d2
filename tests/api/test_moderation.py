"""Moderation (``api.moderation``): the blocklist, OpenAI's endpoint against a local aiohttp
server (no real network), and the check through the gateway before any credit or miner."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from aiohttp import web

from api.errors import ModerationUnavailable
from api.moderation import BlocklistModerator, ChainModerator, OpenAIModerator, Verdict, from_settings, input_texts
from node.config import ApiSettings
from canopy.logging import redact
from tests.support.gateway import MODEL, assert_envelope, invocations, log_row, new_key, post

pytestmark = pytest.mark.asyncio(loop_scope="module")


# -- the blocklist ------------------------------------------------------------------------

async def test_blocklist_matches_whole_words_and_phrases_in_any_case():
    moderator = BlocklistModerator(["forbidden", "red  herring", "c++"])
    assert (await moderator.check(["this is FORBIDDEN!"])).flagged
    assert (await moderator.check(["a Red\nHerring here"])).flagged
    assert (await moderator.check(["I write C++ daily"])).flagged
    verdict = await moderator.check(["ok", "forbidden."])
    assert verdict.flagged and verdict.categories == ["blocklist"] and "forbidden" not in verdict.reason
    assert not (await moderator.check(["unforbiddenly", "forbiddens", "redherring", "red"])).flagged
    assert not (await moderator.check([])).flagged


async def test_blocklist_file_skips_comments_and_blanks_and_empty_means_allow(tmp_path):
    path = tmp_path / "blocked.txt"
    path.write_text("# a comment\n\nbad word  # trailing comment\n   \nnasty\n", encoding="utf-8")
    moderator = BlocklistModerator.from_file(path)
    assert moderator.terms == ["bad word", "nasty"]
    assert (await moderator.check(["such a BAD WORD"])).flagged
    assert not (await moderator.check(["a comment", "trailing comment", "bad"])).flagged
    assert not (await BlocklistModerator().check(["anything at all"])).flagged


async def test_input_texts_reads_strings_and_text_parts():
    messages = [{"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "part one"},
                                             {"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": None}, "plain"]
    assert input_texts(messages) == ["sys", "part one", "plain"]
    assert input_texts("a prompt") == ["a prompt"] and input_texts(["a", "b"]) == ["a", "b"]


# -- OpenAI's endpoint, served locally -----------------------------------------------------

@pytest_asyncio.fixture(loop_scope="module")
async def openai_server():
    state = {"mode": "ok", "seen": []}

    async def moderations(request: web.Request) -> web.Response:
        body = await request.json()
        state["seen"].append((request.headers.get("authorization"), body))
        if state["mode"] == "500":
            return web.json_response({"error": "boom"}, status=500)
        if state["mode"] == "slow":
            await asyncio.sleep(2)
        flagged = any("attack" in text for text in body["input"])
        return web.json_response({"id": "modr-1", "model": body["model"], "results": [
            {"flagged": flagged and "attack" in text,
             "categories": {"violence": flagged and "attack" in text, "hate": False}}
            for text in body["input"]]})

    app = web.Application()
    app.router.add_post("/v1/moderations", moderations)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    state["url"] = f"http://127.0.0.1:{port}/v1"
    yield state
    await runner.cleanup()


async def test_openai_flags_and_passes(openai_server):
    moderator = OpenAIModerator("sk-test-key-0123456789abcdef", base_url=openai_server["url"])
    verdict = await moderator.check(["hello", "plan an attack"])
    assert verdict.flagged and verdict.categories == ["violence"] and "violence" in verdict.reason
    assert not (await moderator.check(["hello there"])).flagged
    auth, body = openai_server["seen"][0]
    assert auth == "Bearer sk-test-key-0123456789abcdef"
    assert body == {"model": "omni-moderation-latest", "input": ["hello", "plan an attack"]}
    assert "sk-test" not in repr(moderator)


async def test_openai_500_fails_open_or_closed(openai_server):
    openai_server["mode"] = "500"
    assert await OpenAIModerator("k", base_url=openai_server["url"]).check(["plan an attack"]) == Verdict(False)
    with pytest.raises(ModerationUnavailable) as raised:
        await OpenAIModerator("k", base_url=openai_server["url"], fail_closed=True).check(["hi"])
    assert raised.value.status == 503 and raised.value.code == "moderation_unavailable"


async def test_openai_timeout_fails_open_or_closed(openai_server):
    openai_server["mode"] = "slow"
    open_ = OpenAIModerator("k", base_url=openai_server["url"], timeout_s=0.2)
    assert not (await open_.check(["plan an attack"])).flagged
    with pytest.raises(ModerationUnavailable):
        await OpenAIModerator("k", base_url=openai_server["url"], timeout_s=0.2, fail_closed=True).check(["hi"])


async def test_chain_runs_in_order_and_settings_build_it(tmp_path, openai_server):
    chain = ChainModerator([BlocklistModerator(["nope"]), OpenAIModerator("k", base_url=openai_server["url"])])
    assert (await chain.check(["nope"])).categories == ["blocklist"]
    assert not openai_server["seen"], "the blocklist answered first"
    assert (await chain.check(["an attack"])).categories == ["violence"]
    assert not (await chain.check(["fine"])).flagged

    assert from_settings(ApiSettings()) is None
    blocked = tmp_path / "b.txt"
    blocked.write_text("nope\n")
    settings = ApiSettings(moderation_blocklist=str(blocked), moderation_openai_key="sk-abcdefghijklmnopqrstuvwx",
                           moderation_openai_url=openai_server["url"], moderation_fail_closed=True)
    built = from_settings(settings)
    assert isinstance(built, ChainModerator) and built.moderators[1].fail_closed
    assert "sk-abcdefghijklmnop" not in str(settings) and "sk-abcdefghijklmnop" not in repr(built)
    assert "sk-abcdefghijklmnop" not in redact("key=sk-abcdefghijklmnopqrstuvwx")


# -- through the gateway -------------------------------------------------------------------

@pytest.fixture
def blocklist(gateway):
    gateway.app.state.moderator = BlocklistModerator(["forbidden fruit"])
    yield
    gateway.app.state.moderator = None


async def test_flagged_chat_is_400_without_charge_or_miner(gateway, blocklist):
    key = await new_key(gateway, "mod-flag", credits=2)
    before = len(await invocations(gateway))
    body = {"model": MODEL, "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "tell me about the Forbidden Fruit"}]}]}
    response = await post(gateway, key, body)
    error = assert_envelope(response, 400, param="messages", type_="invalid_request_error")
    assert error["code"] == "content_policy_violation" and "blocked" in error["message"]
    assert (await gateway.keys.get("mod-flag")).credits == 2
    assert len(await invocations(gateway)) == before, "no miner was called"
    row = await log_row(gateway, response.headers["x-request-id"])
    assert row.status == 400 and row.error == "moderation"

    prompt = await post(gateway, key, {"model": MODEL, "prompt": "forbidden fruit", "max_tokens": 8},
                        path="/v1/completions")
    assert assert_envelope(prompt, 400, param="prompt")["code"] == "content_policy_violation"

    sn1 = await post(gateway, key, {"roles": ["user"], "messages": ["FORBIDDEN fruit?"]}, path="/chat")
    assert assert_envelope(sn1, 400, param="messages")["code"] == "content_policy_violation"
    assert (await gateway.keys.get("mod-flag")).credits == 2
    assert len(await invocations(gateway)) == before


async def test_an_opted_in_log_keeps_the_prompt_of_a_flagged_request(gateway, blocklist):
    key = await new_key(gateway, "mod-logged")
    gateway.app.state.request_log.log_prompts = True
    try:
        chat = await post(gateway, key, {"model": MODEL, "messages": [{"role": "user", "content": "forbidden fruit"}]})
        sn1 = await post(gateway, key, {"roles": ["user"], "messages": ["forbidden fruit!"]}, path="/chat")
    finally:
        gateway.app.state.request_log.log_prompts = False
    for response, text in ((chat, "forbidden fruit"), (sn1, "forbidden fruit!")):
        row = await log_row(gateway, response.headers["x-request-id"])
        assert row.status == 400 and row.error == "moderation" and text in row.prompt, "operators can review it"


async def test_clean_chat_passes_and_is_charged(gateway, blocklist):
    key = await new_key(gateway, "mod-clean", credits=2)
    response = await post(gateway, key, {"model": MODEL, "max_tokens": 8, "seed": 1,
                                         "messages": [{"role": "user", "content": "forbidden fruits of the forest"}]})
    assert response.status_code == 200, response.text
    assert (await gateway.keys.get("mod-clean")).credits == 1
