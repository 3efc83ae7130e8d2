"""The README's API reference examples, run as written against a live gateway.

Every fenced ``bash`` block of README.md's "API reference" section that calls ``curl`` is run
with the real ``curl`` (``bash -c BLOCK``, ``CANOPY_KEY`` and ``CANOPY_ADMIN_KEY`` in the
environment holding real keys), and the ``python`` block that uses the ``openai`` client is
run in a fresh interpreter with ``CANOPY_KEY`` bound to the key. The gateway is
``tests.support.gateway``'s (real miner axons with the fake LLM chute, the app on uvicorn),
also served on 127.0.0.1:8000, the address the README uses.

Two substitutions, both in the text before it runs:

- the model: the fixture's chute serves ``fake-model`` (``tests.support.gateway.MODEL``), not the
  README's ``HuggingFaceTB/SmolLM2-135M-Instruct`` (a real LLM would make this a minutes-long
  test); every occurrence of the README's model name is replaced by the fixture's;
- the address, only when port 8000 is taken on this machine: ``127.0.0.1:8000`` becomes the
  free port the gateway got instead (said in the test's output). The examples are never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
import pytest_asyncio
import uvicorn

from tests.support import ROOT
from tests.support import gateway as shared
from tests.support.gateway import MODEL, new_key

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

README_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
README_ADDRESS = "127.0.0.1:8000"
gateway = shared.gateway  # the API tests' fixture, used here too


def api_reference() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## API reference\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", api_reference(), flags=re.S | re.M)


def curl_blocks() -> list[str]:
    return [block for block in blocks("bash") if "curl" in block]


def client_blocks() -> list[str]:
    return [block for block in blocks("python") if "OpenAI(" in block]


def _bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen(128)
    return sock


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def readme_gateway(gateway):
    """The fixture gateway's app, also on 127.0.0.1:8000 (else on the fixture's own port)."""
    sock = _bind(8000)
    server, serving, address = None, None, README_ADDRESS
    if sock is None:  # 8000 is taken here: the examples go to the fixture's port instead
        address = gateway.url.removeprefix("http://")
        print(f"port 8000 is in use: the README examples are sent to {address}")
    else:
        server = uvicorn.Server(uvicorn.Config(gateway.app, log_level="warning", lifespan="off"))
        server.install_signal_handlers = lambda: None
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
    env = {**os.environ, "CANOPY_KEY": await new_key(gateway, "readme-user"),
           "CANOPY_ADMIN_KEY": await new_key(gateway, "readme-admin", admin=True)}
    try:
        yield address, env
    finally:
        if server is not None:
            server.should_exit = True
            await serving
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def as_run(text: str, address: str) -> str:
    return text.replace(README_MODEL, MODEL).replace(README_ADDRESS, address)


async def run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """A child process, awaited without blocking the loop the gateway serves on."""
    process = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_api_reference_has_the_examples():
    assert len(curl_blocks()) >= 2 and len(client_blocks()) == 1
    assert all(README_ADDRESS in block for block in curl_blocks() + client_blocks())
    assert shutil.which("curl"), "the curl binary is needed (apt-get install curl)"


@pytest.mark.parametrize("index", range(len(curl_blocks())))
async def test_curl_example_runs_as_written(readme_gateway, index, tmp_path):
    address, env = readme_gateway
    block = curl_blocks()[index]
    code, out, err = await run(["bash", "-c", as_run(block, address)], env, tmp_path)
    assert code == 0, (block, err)
    answer = json.loads(out)
    assert "error" not in answer, answer
    if "/v1/chat/completions" in block:
        assert answer["object"] == "chat.completion" and answer["model"] == MODEL
        assert answer["choices"][0]["message"]["content"] and answer["usage"]["completion_tokens"] > 0
    elif "/admin/stats" in block:
        assert isinstance(answer["requests"], int) and isinstance(answer["by_status"], dict)
    else:
        raise AssertionError(f"a new curl example: give it a check here\n{block}")


async def test_openai_client_example_runs_as_written(readme_gateway, tmp_path):
    address, env = readme_gateway
    block = client_blocks()[0]
    script = "import os\nCANOPY_KEY = os.environ['CANOPY_KEY']\n" + as_run(block, address)
    code, out, err = await run([sys.executable, "-c", script], env, tmp_path)
    assert code == 0, err
    assert out.strip(), err  # the streamed words, printed as they came
