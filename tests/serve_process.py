"""A real `segformer serve` in a subprocess on 127.0.0.1 and a free port, for the load and browser tests."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import SRC


class ServerProcess:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def rss_mb(self) -> float:
        """The server's resident memory now (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Send `sig` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_server(*args: str, log: Path, timeout: float = 60) -> ServerProcess:
    """`python -m segformer serve ARGS --port 0` with its log (stderr) in `log`; returns once it prints
    its address."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
    env.pop("SEGFORMER_TOKEN", None)
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "segformer", "serve", *args, "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())) or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line.decode())
    if not match:
        proc.kill()
        raise AssertionError(f"no address in {line!r}")
    return ServerProcess(proc, match.group(1), log)
