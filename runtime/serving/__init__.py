"""Serving DEQ-Flow behind NVIDIA's Triton Inference Server.

- `server`: `deqflow serve` runs a real Triton server through PyTriton (which bundles Triton with its python
  backend) around any deqflow backend: `deqflow_flow` (image pairs, dynamic batching) and `deqflow_stream`
  (one frame per request in a Triton sequence; the server keeps each stream's previous frame and fixed point
  and warm-starts the next solve).
- `client`: a small client over tritonclient (HTTP or gRPC) with the same preprocessing as local inference.
- `triton_repo`: model repositories for NVIDIA's Triton container (onnxruntime / TensorRT models, and the split
  layout as encoder/step/decode plus a python-backend model driving the host solver through BLS calls).

Only `protocol` (names shared by server, client and repositories) is imported here: PyTriton and tritonclient
are optional (`pip install deqflow[serve]`) and imported by the modules that need them.
"""

from runtime.serving.protocol import FLOW_MODEL, STREAM_MODEL

__all__ = ["FLOW_MODEL", "STREAM_MODEL"]
