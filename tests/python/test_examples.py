"""Run examples/python-publish and examples/go-publish against the server and
prove that a real centrifuge-python subscriber receives what they publish."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tidings_testlib import REPO_ROOT, Clients, unique

PYTHON_EXAMPLE = REPO_ROOT / "examples" / "python-publish" / "publish.py"
GO_EXAMPLE = REPO_ROOT / "examples" / "go-publish"
RUN_TIMEOUT = 20.0
GO_BUILD_TIMEOUT = 120.0


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    # Loopback traffic must never go through a proxy from the environment.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    env.update(extra)
    return env


async def _run(argv: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} did not finish within {timeout}s")
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.fixture(scope="session")
def go_publish_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build examples/go-publish in a temp dir with an empty module/build cache and no proxy."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "the `go` command is not installed; the Go example test needs it "
            "(Debian/Ubuntu: apt-get install golang-go)",
            pytrace=False,
        )
    work = tmp_path_factory.mktemp("go-publish")
    src = work / "src"
    src.mkdir()
    for name in ("go.mod", "main.go"):
        shutil.copy2(GO_EXAMPLE / name, src / name)
    binary = work / "go-publish"
    env = _clean_env(
        GOCACHE=str(work / "gocache"),
        GOPATH=str(work / "gopath"),
        GOPROXY="off",  # proves the example needs no module downloads
        GOFLAGS="",
        GO111MODULE="on",
        CGO_ENABLED="0",
    )
    try:
        done = subprocess.run(
            [go, "build", "-o", str(binary), "."], cwd=src, env=env,
            capture_output=True, text=True, timeout=GO_BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"go build did not finish within {GO_BUILD_TIMEOUT}s", pytrace=False)
    assert done.returncode == 0, f"go build failed:\n{done.stdout}\n{done.stderr}"
    return binary


async def test_python_example_publishes_with_flags(server):
    channel = unique("ex-py")
    message = "hello from python " + unique("m")
    async with Clients(server) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)
        code, out, err = await _run(
            [sys.executable, str(PYTHON_EXAMPLE),
             "--api-url", server.api_url, "--api-key", server.api_key,
             "--channel", channel, "--message", message],
            env=_clean_env(),
        )
        assert code == 0, f"stdout: {out}\nstderr: {err}"
        assert f"published to {channel}: offset=1" in out
        ctx = await sub.wait("publication")
        assert ctx.pub.data == {"text": message}


async def test_python_example_reads_env_and_json(server):
    channel = unique("ex-py-env")
    async with Clients(server) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)
        code, out, err = await _run(
            [sys.executable, str(PYTHON_EXAMPLE), "--json"],
            env=_clean_env(TIDINGS_API_URL=server.api_url, TIDINGS_API_KEY=server.api_key,
                           TIDINGS_CHANNEL=channel, TIDINGS_MESSAGE='{"price": 12.5, "tags": ["a"]}'),
        )
        assert code == 0, f"stdout: {out}\nstderr: {err}"
        ctx = await sub.wait("publication")
        assert ctx.pub.data == {"price": 12.5, "tags": ["a"]}


async def test_python_example_wrong_key_fails(server):
    code, out, err = await _run(
        [sys.executable, str(PYTHON_EXAMPLE), "--api-url", server.api_url,
         "--api-key", "wrong", "--channel", unique("x"), "--message", "m"],
        env=_clean_env(),
    )
    assert code == 1, f"stdout: {out}\nstderr: {err}"
    assert "Unauthorized" in err


async def test_go_example_publishes_with_flags(server, go_publish_binary):
    channel = unique("ex-go")
    message = "hello from go " + unique("m")
    async with Clients(server) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)
        code, out, err = await _run(
            [str(go_publish_binary), "-api-url", server.api_url, "-api-key", server.api_key,
             "-channel", channel, "-message", message],
            env=_clean_env(),
        )
        assert code == 0, f"stdout: {out}\nstderr: {err}"
        assert f"published to {channel}: offset=1" in out
        ctx = await sub.wait("publication")
        assert ctx.pub.data == {"text": message}


async def test_go_example_reads_env(server, go_publish_binary):
    channel = unique("ex-go-env")
    async with Clients(server) as clients:
        conn = await clients.connect()
        sub = await conn.subscribe(channel)
        code, out, err = await _run(
            [str(go_publish_binary)],
            env=_clean_env(TIDINGS_API_URL=server.api_url, TIDINGS_API_KEY=server.api_key,
                           TIDINGS_CHANNEL=channel, TIDINGS_MESSAGE="via env"),
        )
        assert code == 0, f"stdout: {out}\nstderr: {err}"
        ctx = await sub.wait("publication")
        assert ctx.pub.data == {"text": "via env"}


async def test_go_example_reports_api_errors(server, go_publish_binary):
    code, out, err = await _run(
        [str(go_publish_binary), "-api-url", server.api_url, "-api-key", server.api_key,
         "-channel", "nosuchns:" + unique("c"), "-message", "m"],
        env=_clean_env(),
    )
    assert code == 1, f"stdout: {out}\nstderr: {err}"
    assert "error 102" in err

    code, out, err = await _run(
        [str(go_publish_binary), "-api-url", server.api_url, "-api-key", "wrong",
         "-channel", unique("c"), "-message", "m"],
        env=_clean_env(),
    )
    assert code == 1, f"stdout: {out}\nstderr: {err}"
    assert "unauthorized" in err
