"""Triton python-backend model running one ONNX graph with ONNX Runtime (CPU), copied as `model.py` beside
`model.onnx` by runtime.serving.triton_repo with parts='python': for Triton servers without the onnxruntime
backend (PyTriton's bundled server). NVIDIA's container serves the graphs with its onnxruntime backend instead."""

from __future__ import annotations

import os

import numpy as np


class TritonPythonModel:
    def initialize(self, args) -> None:
        import onnxruntime as ort

        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        import triton_python_backend_utils as pb

        responses = []
        for request in requests:
            feeds = {n: np.array(pb.get_input_tensor_by_name(request, n).as_numpy()) for n in self.inputs}
            results = self.session.run(self.outputs, feeds)
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(n, np.ascontiguousarray(v))
                                                                  for n, v in zip(self.outputs, results)]))
        return responses
