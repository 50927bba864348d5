"""A real redis-server on 127.0.0.1 for the fleet tests: start, stop, restart (data lost), freeze."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

#: Upper bound for a server to come up or go down; generous for a loaded 2-core machine.
_STARTUP = 60.0


def ensure_redis_server() -> str:
    """Path of ``redis-server``, installing Debian's package first if it is missing (CI runs as root)."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env, stdout=subprocess.DEVNULL
        )
        found = shutil.which("redis-server")
        if found:
            return found
    raise RuntimeError("redis-server is not installed: apt-get install redis-server (the fleet tests need a real one)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process without persistence (``--save "" --appendonly no``) in ``workdir``."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        self.workdir = workdir
        self.binary = binary or ensure_redis_server()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        """Start the server (on its previous port if it had one, else on a free one)."""
        for _attempt in range(5):
            port = self.port or _free_port()
            proc = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(port),
                    "--bind", self.host,
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.workdir),
                    "--protected-mode", "yes",
                    "--loglevel", "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + _STARTUP
            while time.monotonic() < deadline and proc.poll() is None:
                if _ping(port):
                    self.port, self.proc = port, proc
                    return
                time.sleep(0.02)
            proc.kill()
            proc.wait()
            if self.port:  # our own port is taken by someone else meanwhile: nothing to do but fail
                break
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port or '?'}")

    def stop(self) -> None:
        """Stop the server (its data is lost: nothing is persisted)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=_STARTUP)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port: every key is gone, clients must reconnect."""
        self.stop()
        self.start()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Make the server unreachable for the duration: connections stay open but nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def freeze(self) -> None:
        """Stop answering (SIGSTOP) until :meth:`thaw`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Answer again (SIGCONT)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
