"""`deqflow serve` as a child process on free 127.0.0.1 ports: for tests, load tests and scripts that need a
running server and must leave nothing behind (processes, ports, shared memory) when they stop it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deqflow.errors import DeqflowError

READY = "deqflow serve: ready"


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """Start `deqflow serve ARGS` (ports and workspace chosen here), wait until it is ready, stop it with SIGTERM."""

    def __init__(self, args: list[str], root: str | os.PathLike | None = None, start_timeout_s: float = 240.0,
                 env: dict | None = None) -> None:
        self.ports = free_ports(3)
        self.tmp = Path(tempfile.mkdtemp(prefix="deqflow-serve-"))
        self.workspace, self.log = self.tmp / "workspace", self.tmp / "serve.log"
        http, grpc, metrics = self.ports
        self.http, self.grpc = f"http://127.0.0.1:{http}", f"grpc://127.0.0.1:{grpc}"
        self.metrics = f"http://127.0.0.1:{metrics}/metrics"
        self.args = [sys.executable, "-m", "deqflow", "serve", "--host", "127.0.0.1", "--http-port", str(http),
                     "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--workspace", str(self.workspace),
                     *args]
        self.env = {**os.environ, **(env or {})}
        if root is not None:
            self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), self.env.get("PYTHONPATH")) if p)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.stop_seconds: float | None = None

    def start(self) -> ServerProcess:
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while READY not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise DeqflowError(f"deqflow serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self

    def stop(self, timeout_s: float = 90.0) -> int:
        """SIGTERM, wait; returns the exit status (kills it after `timeout_s`)."""
        if self.proc is None or self.proc.poll() is not None:
            return -1 if self.proc is None else self.proc.returncode
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.stop_seconds = time.monotonic() - t0
        return code

    def leftovers(self) -> list[str]:
        """What a stopped server left: open ports, processes naming its workspace, its shared memory."""
        found = [f"port {p}" for p in self.ports if port_in_use(p)]
        for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
            try:
                if str(self.workspace).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(f"process {pid}")
            except OSError:
                continue
        if self.proc is not None and os.path.isdir("/dev/shm"):
            found += [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.startswith(f"pytrtion{self.proc.pid}")]
        for folder in Path(tempfile.gettempdir()).glob("folder*"):  # Triton's copies of loaded models
            try:
                if str(self.workspace).encode() in (folder / "config.pbtxt").read_bytes():
                    found.append(str(folder))
            except OSError:
                continue
        return found

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
