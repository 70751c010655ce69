"""`deqflow serve`'s server: a real Triton Inference Server, started through PyTriton, with `deqflow_flow`
(dynamic batching) and `deqflow_stream` (sequence batching) bound to deqflow backends.

Two things PyTriton does not do are done here: Triton's python-backend stub must load the libpython of the
interpreter running deqflow (a venv made from another Python than the system's otherwise fails to load any
model), and the stream model needs a `sequence_batching` section, which PyTriton's ModelConfig lacks; it is
added to the configuration PyTriton generates, with the sequence control tensors declared as optional inputs
so that they reach the bound function.
"""

from __future__ import annotations

import os
import shutil
import signal
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deqflow.errors import InputError
from deqflow.extras import require
from runtime.backends import BackendChoice
from runtime.serving.models import Admission, FlowModel, StreamModel, StreamStore
from runtime.serving.protocol import (
    FLOW_MODEL,
    FRAME_INPUT,
    SEQUENCE_END,
    SEQUENCE_ID,
    SEQUENCE_START,
    STREAM_MODEL,
    sequence_batching,
)


@dataclass
class ServeConfig:
    """Addresses, batching and stream settings of one server."""

    choice: BackendChoice
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    stream_idle_timeout_s: float = 60.0
    exit_timeout_s: int = 30
    workspace: str | None = None
    verbose: bool = False
    admission: Admission | None = None  # per model instance: largest frame and memory plan (None: no limit)

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = int(getattr(self, name))
            if not 0 < port < 65536:
                raise InputError(f"--{name.replace('_', '-')} must be a port number 1..65535, got {port}")
        if len({self.http_port, self.grpc_port, self.metrics_port}) < 3:
            raise InputError("--http-port, --grpc-port and --metrics-port must differ")
        if self.max_batch < 1 or self.instances < 1:
            raise InputError(f"--max-batch and --instances must be >= 1, got {self.max_batch} / {self.instances}")
        if self.max_queue_delay_us < 0 or self.stream_idle_timeout_s <= 0:
            raise InputError("--max-queue-delay-us must be >= 0 and --stream-idle-timeout > 0")


def import_pytriton():
    return require("pytriton.triton", "deqflow serve")


def use_own_libpython(env: dict | None = None) -> str:
    """Put this interpreter's libpython folder first on LD_LIBRARY_PATH (inherited by Triton and its python
    stubs), so the stub does not pick up the system's libpython of another patch version."""
    env = os.environ if env is None else env
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir and Path(libdir).is_dir():
        paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])
    return libdir


_SECTIONS: dict[str, dict] = {}  # model name -> sections replacing PyTriton's batching configuration


def add_config_sections(model_name: str, sections: dict) -> None:
    """Make PyTriton write `sections` into `model_name`'s config.pbtxt (instead of dynamic batching)."""
    from pytriton.model_config import generator

    cls = generator.ModelConfigGenerator
    if not getattr(cls, "_deqflow_patched", False):
        original = cls.get_config

        def get_config(self) -> dict:
            config = original(self)
            extra = _SECTIONS.get(config.get("name"))
            if extra:
                config.pop("dynamic_batching", None)
                config.update(extra)
            return config

        cls.get_config, cls._deqflow_patched = get_config, True
    _SECTIONS[model_name] = sections


def tensors(spec: list[tuple]) -> list:
    from pytriton.model_config import Tensor

    return [Tensor(name=n, dtype=d, shape=s, optional=o) for n, d, s, o in spec]


FLOW_SIGNATURE = {
    "inputs": [("image1", np.float32, (3, -1, -1), False), ("image2", np.float32, (3, -1, -1), False)],
    "outputs": [("flow", np.float32, (2, -1, -1), False), ("iterations", np.int32, (1,), False),
                ("residual", np.float32, (1,), False), ("batch", np.int32, (1,), False),
                ("stop_reason", np.bytes_, (1,), False), ("error", np.bytes_, (1,), False)]}
STREAM_SIGNATURE = {
    "inputs": [(FRAME_INPUT, np.float32, (3, -1, -1), False), (SEQUENCE_START, np.int32, (1,), True),
               (SEQUENCE_END, np.int32, (1,), True), (SEQUENCE_ID, np.uint64, (1,), True)],
    "outputs": [("flow", np.float32, (2, -1, -1), False), ("iterations", np.int32, (1,), False),
                ("residual", np.float32, (1,), False), ("warm", np.int32, (1,), False),
                ("stop_reason", np.bytes_, (1,), False), ("error", np.bytes_, (1,), False)]}


def reap_leftovers(workspace: Path, shm_prefix: str) -> list[str]:
    """Stop what the server's Triton left behind and free it: python-backend stubs still running from
    `workspace` (a stub whose model was executing when Triton's exit timeout ran out outlives Triton), the
    shared-memory regions named after this process, and the temporary model folders Triton made for models
    of this workspace. Linux (/proc, /dev/shm); returns what was cleaned."""
    cleaned, marker = [], str(workspace).encode()
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            if int(pid) != os.getpid() and marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
                cleaned.append(f"process {pid}")
        except (OSError, ValueError):
            continue
    shm = Path("/dev/shm")
    for region in shm.glob(f"{shm_prefix}*") if shm.is_dir() else []:
        region.unlink(missing_ok=True)
        cleaned.append(str(region))
    for folder in Path(tempfile.gettempdir()).glob("folder*"):  # Triton's copies of the models it loaded
        try:
            if marker in (folder / "config.pbtxt").read_bytes():
                shutil.rmtree(folder, ignore_errors=True)
                cleaned.append(str(folder))
        except OSError:
            continue
    return cleaned


class Server:
    """Start, wait for a signal, stop. `start()` returns once both models are ready."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = StreamStore(config.stream_idle_timeout_s)
        self._stop = threading.Event()
        self._triton = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.workspace: Path | None = None

    def _triton_config(self):
        from pytriton.triton import TritonConfig

        c = self.config
        log_file = None if c.verbose else Path(self._tmp.name) / "triton.log"  # quiet unless --verbose
        return TritonConfig(http_address=c.host, http_port=c.http_port, grpc_address=c.host, grpc_port=c.grpc_port,
                            metrics_address=c.host, metrics_port=c.metrics_port, exit_timeout_secs=c.exit_timeout_s,
                            allow_gpu_metrics=False, log_verbose=1 if c.verbose else 0, log_file=log_file)

    def _bind(self, triton) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig

        c = self.config
        flows = [FlowModel(c.choice, c.admission) for _ in range(c.instances)]
        streams = [StreamModel(c.choice, self.store, c.admission) for _ in range(c.instances)]
        batcher = DynamicBatcher(max_queue_delay_microseconds=c.max_queue_delay_us)
        triton.bind(FLOW_MODEL, flows, inputs=tensors(FLOW_SIGNATURE["inputs"]),
                    outputs=tensors(FLOW_SIGNATURE["outputs"]), strict=False,
                    config=ModelConfig(max_batch_size=c.max_batch, batcher=batcher))
        add_config_sections(STREAM_MODEL, {"sequence_batching": sequence_batching(c.stream_idle_timeout_s)})
        triton.bind(STREAM_MODEL, streams, inputs=tensors(STREAM_SIGNATURE["inputs"]),
                    outputs=tensors(STREAM_SIGNATURE["outputs"]), strict=False,
                    config=ModelConfig(max_batch_size=c.max_batch))

    def start(self) -> None:
        module = import_pytriton()
        use_own_libpython()
        self._tmp = tempfile.TemporaryDirectory(prefix="deqflow-serve-")
        workspace = self.config.workspace or str(Path(self._tmp.name) / "workspace")
        self.workspace = Path(workspace).resolve()
        self._triton = module.Triton(config=self._triton_config(), workspace=workspace)
        try:
            self._bind(self._triton)
            self._triton.run()
        except Exception:
            self.stop()
            raise
        threading.Thread(target=self._sweep, name="deqflow-stream-expiry", daemon=True).start()

    def _sweep(self) -> None:
        period = max(0.05, min(self.config.stream_idle_timeout_s / 4, 5.0))
        while not self._stop.wait(period):
            self.store.expire()

    def wait(self, on_signal: Callable[[int], None] | None = None) -> None:
        """Block until SIGINT/SIGTERM (or `request_stop`), then stop: Triton lets in-flight requests finish."""
        def handler(signum, _frame):
            if on_signal:
                on_signal(signum)
            self._stop.set()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stop.wait(0.5):
                if self._triton is not None and not self._triton.is_alive():
                    break
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._triton is not None:
            self._triton.stop()
            self._triton = None
            reap_leftovers(self.workspace, f"pytrtion{os.getpid()}")
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
