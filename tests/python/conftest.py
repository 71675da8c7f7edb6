"""Fixtures for the Python compatibility suite.

One `tidings serve --port 0` process is shared by the whole session (it is
restarted if a test kills it). Every test uses channel and user names of its
own, so tests do not see each other's traffic.

Async tests (``async def test_...``) are run by the small runner below, each
inside ``asyncio.run`` with a hard deadline, so no pytest plugin is needed.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import httpx
import pytest

from tidings_testlib import (
    REPO_ROOT,
    WIRES,
    ServerHandle,
    Wire,
    make_sync_api,
)

# Deadline for one async test body (the suite is meant to finish well under a minute).
ASYNC_TEST_TIMEOUT = 30.0
# Deadline for the server to print its "listening" line and answer /health.
STARTUP_TIMEOUT = 20.0
# Deadline for the server to exit after SIGTERM before it gets SIGKILL.
SHUTDOWN_TIMEOUT = 5.0

LISTEN_PREFIX = "tidings listening on http://"


def tidings_bin() -> Path:
    return Path(os.environ.get("TIDINGS_BIN", str(REPO_ROOT / "target" / "debug" / "tidings")))


class _ServerProcess:
    """A running `tidings serve` child process and what it printed."""

    def __init__(self, log_dir: Path) -> None:
        binary = tidings_bin()
        if not binary.is_file() or not os.access(binary, os.X_OK):
            pytest.fail(
                f"tidings binary not found at {binary}; build it with "
                "`cargo build -p tidings-server` or set TIDINGS_BIN",
                pytrace=False,
            )
        self.api_key = "py-" + secrets.token_hex(12)
        self.token_secret = "py-secret-" + secrets.token_hex(12)
        env = dict(os.environ)
        env.update(
            {
                "TIDINGS_HTTP_API_KEY": self.api_key,
                "TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY": self.token_secret,
                "TIDINGS_SHUTDOWN_TIMEOUT": "2s",
                "RUST_BACKTRACE": "1",
            }
        )
        self.stderr_path = log_dir / f"tidings-{int(time.time() * 1000)}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.stdout_lines: list[str] = []
        self._listen_line = threading.Event()
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--address", "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        # Keep draining stdout for the life of the process so it can never block on a
        # full pipe; the reader also tells us when the "listening" line shows up.
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        try:
            self.base_url = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stdout_lines.append(line)
            if line.startswith(LISTEN_PREFIX):
                self._listen_line.set()
        self._listen_line.set()  # EOF: wake the waiter so it can report the exit

    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            self._stderr.flush()
            data = self.stderr_path.read_bytes()
        except OSError:
            return "<no stderr>"
        return data[-limit:].decode("utf-8", "replace")

    def describe(self) -> str:
        return (
            f"exit code: {self.proc.poll()}\n"
            f"stdout: {self.stdout_lines!r}\n"
            f"stderr ({self.stderr_path}) tail:\n{self.stderr_tail()}"
        )

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        if not self._listen_line.wait(timeout=STARTUP_TIMEOUT):
            pytest.fail(
                f"tidings did not print '{LISTEN_PREFIX}...' within {STARTUP_TIMEOUT}s\n"
                + self.describe(),
                pytrace=False,
            )
        listen = [l for l in self.stdout_lines if l.startswith(LISTEN_PREFIX)]
        if not listen:
            pytest.fail("tidings exited before it was ready\n" + self.describe(), pytrace=False)
        hostport = listen[0][len(LISTEN_PREFIX):].strip().rstrip("/")
        host, _, port = hostport.rpartition(":")
        if not port.isdigit() or int(port) == 0:
            pytest.fail(f"cannot parse a port from {listen[0]!r}", pytrace=False)
        if host in ("0.0.0.0", "[::]", "::", ""):
            host = "127.0.0.1"
        base_url = f"http://{host}:{port}"
        # The line promises readiness, but confirm with /health (bounded by the same deadline).
        last_error: Optional[BaseException] = None
        with httpx.Client(trust_env=False, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail("tidings exited during startup\n" + self.describe(), pytrace=False)
                try:
                    if http.get(base_url + "/health").status_code == 200:
                        return base_url
                except httpx.HTTPError as err:
                    last_error = err
                time.sleep(0.05)
        pytest.fail(
            f"GET {base_url}/health never answered 200 (last error: {last_error!r})\n"
            + self.describe(),
            pytrace=False,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it is still there after the deadline."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT)
        self._reader.join(timeout=SHUTDOWN_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


class _ServerManager:
    """Hands out the shared server, starting a new one if the last one died."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.current: Optional[_ServerProcess] = None

    def get(self) -> _ServerProcess:
        if self.current is None or not self.current.alive():
            if self.current is not None:
                self.current.stop()
            self.current = _ServerProcess(self._log_dir)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def _server_manager(tmp_path_factory: pytest.TempPathFactory):
    manager = _ServerManager(tmp_path_factory.mktemp("tidings-logs"))
    yield manager
    manager.close()


@pytest.fixture
def server(_server_manager: _ServerManager) -> ServerHandle:
    """The running server (URLs, API key, token secret)."""
    process = _server_manager.get()
    handle = ServerHandle(
        base_url=process.base_url,
        api_key=process.api_key,
        token_secret=process.token_secret,
    )
    yield handle
    if not process.alive():
        pytest.fail("the tidings server died during this test\n" + process.describe(), pytrace=False)


@pytest.fixture(params=WIRES, ids=str)
def wire(request: pytest.FixtureRequest) -> Wire:
    """The client protocol's encoding: a test that takes it runs with JSON clients
    and again with Protobuf clients (centrifuge-python's `use_protobuf=True`)."""
    return request.param


@pytest.fixture
def api(server: ServerHandle):
    """A synchronous `cent.Client` pointed at the server."""
    client = make_sync_api(server)
    yield client
    client.close()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run `async def` tests in a fresh event loop with a deadline."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def guarded():
        try:
            await asyncio.wait_for(func(**kwargs), timeout=ASYNC_TEST_TIMEOUT)
        except asyncio.TimeoutError:
            pytest.fail(f"async test did not finish within {ASYNC_TEST_TIMEOUT}s", pytrace=False)

    asyncio.run(guarded())
    return True
