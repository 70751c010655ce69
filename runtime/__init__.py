"""deqflow runtime: run exported DEQ-Flow models with TensorRT, ONNX Runtime or PyTorch behind one interface,
check them against a float32 reference (`compare`) and track their latency (`bench`).

Importing `runtime` (and every module in it) never imports torch, tensorrt, pycuda or onnxruntime: each
backend imports its library when it is created, so deployment machines need only what they run.

    from runtime import create_backend, prepare, SolveOverrides
    with create_backend("onnxruntime", "model.onnx", provider="cpu") as backend:
        batch = prepare(rgb1, rgb2)                       # uint8 (H,W,3) -> padded float32 (1,3,H',W')
        result = backend.infer(batch.image1, batch.image2)
        flow = batch.unpad(result.flow)[0]                # (H,W,2)
        result.iterations, result.residual
"""

from deqflow.host_solver import WarmState, solve
from deqflow.solver_spec import SolveOverrides, SolveSpec
from runtime.backends import BACKENDS, Backend, InferenceResult, TensorSpec, create_backend, parse_spec
from runtime.modelfile import ModelFile, open_model_file
from runtime.pipeline import FlowEstimator, PairFlow
from runtime.preprocessing import PreparedBatch, prepare, real_pair, real_pairs, to_batch, unpad_flow

__all__ = [
    "BACKENDS", "Backend", "FlowEstimator", "InferenceResult", "ModelFile", "PairFlow", "PreparedBatch",
    "SolveOverrides", "SolveSpec", "TensorSpec", "WarmState", "create_backend", "open_model_file", "parse_spec",
    "prepare", "real_pair", "real_pairs", "solve", "to_batch", "unpad_flow",
]
