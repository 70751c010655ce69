"""A Backend whose solves run on a `deqflow serve` server (Triton, KServe v2 over HTTP or gRPC), so that
`deqflow infer --server URL` reuses infer's whole pipeline (padding, reports, sequences, resume) unchanged:
only the `_infer` call goes over the network, to the server's dynamically batched `deqflow_flow` model."""

from __future__ import annotations

import numpy as np

from deqflow.errors import InputError
from runtime.backends.base import Backend, InferenceResult, TensorSpec
from runtime.serving.client import Client
from runtime.serving.protocol import FLOW_MODEL


class ServerBackend(Backend):
    """Cold solves on the server; warm starts are the server's own business (its `deqflow_stream` model)."""

    name = "server"
    no_warm_start = ("warm start (--warm-start) is not available with a server: its deqflow_stream model keeps each "
                     "stream's fixed point itself (runtime.serving.client.Client.stream uses it)")

    def __init__(self, url: str, *, timeout_s: float = 300.0) -> None:
        super().__init__(url)
        self.client = Client(url, timeout_s=timeout_s)
        if not self.client.ready():
            self.client.close()
            raise InputError(f"no deqflow server ready at {url} (start one with deqflow serve, and check the "
                             "address and port)")

    @property
    def identity(self) -> str:
        """A hash of the server's model configuration as the server reports it, not of its weights (only the
        server knows those): it changes with the model's shapes and batching."""
        import hashlib
        import json

        try:
            config = self.client.client.get_model_config(FLOW_MODEL)
        except Exception:  # an old server, or a refusal: the URL alone identifies it then
            return f"server {self.model_path}"
        text = json.dumps(config, sort_keys=True, default=str)
        return "server-config " + hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("image1", ["N", 3, "H", "W"]), TensorSpec("image2", ["N", 3, "H", "W"])]

    @property
    def label(self) -> str:
        return f"server:{self.model_path}"

    def _infer(self, image1: np.ndarray, image2: np.ndarray, flow_init: np.ndarray | None,
               state) -> InferenceResult:
        if flow_init is not None:
            raise InputError("a server solve starts from zero flow: flow_init is not sent over the network")
        served = self.client.infer_padded(image1, image2)
        iterations = served.iterations[served.iterations >= 0]
        return InferenceResult(flow=served.flow, flow_low=None,
                               iterations=int(iterations.max()) if iterations.size else 0,
                               residual=np.asarray(served.residual, np.float32),
                               residual_known=bool(np.isfinite(served.residual).any()))

    def close(self) -> None:
        if not self._closed:
            self.client.close()
        super().close()
