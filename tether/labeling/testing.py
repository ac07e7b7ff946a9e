"""Run a real labeling server in a subprocess: for tests (concurrency, crash safety, the
browser test) and for notebooks that want a server next to them.

The child is ``python -m tether.labeling serve`` on 127.0.0.1 and a free port, its output in
a log file (a pipe nobody reads would fill up and stall the server).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["ServerProcess", "free_port", "start_server", "running_server"]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a power cut of the process."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    db: str | Path, log_path: str | Path, tasks: str | Path | None = None, timeout_s: float = 30.0
) -> ServerProcess:
    """Start a server and wait until ``/api/health`` answers; retry once on a port race."""
    import httpx

    for _attempt in range(3):
        port = free_port()
        cmd = [sys.executable, "-m", "tether.labeling", "serve", "--db", str(db), "--port", str(port)]
        if tasks is not None:
            cmd += ["--tasks", str(tasks)]
        log_path = Path(log_path)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(server.url + "/api/health", timeout=2.0).status_code == 200:
                    return server
            except httpx.TransportError:
                time.sleep(0.05)
        server.stop()
        if "address already in use" not in server.log().lower():
            break
    raise RuntimeError(f"labeling server did not start; log:\n{server.log()}")


@contextmanager
def running_server(db: str | Path, log_path: str | Path, tasks: str | Path | None = None) -> Iterator[ServerProcess]:
    server = start_server(db, log_path, tasks)
    try:
        yield server
    finally:
        server.stop()
