"""The Triton repository's python-backend model (runtime/serving/bls_model.py) outside Triton: a stand-in for
`triton_python_backend_utils` records the responses, so the errors a client would read can be checked."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest


class _Tensor:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def as_numpy(self):
        return self.value


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs, self.error = output_tensors, error


class _Error:
    def __init__(self, message):
        self.message = message


class _Request:
    def __init__(self, **inputs):
        self.inputs = inputs


@pytest.fixture
def model(monkeypatch):
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.InferenceResponse, pb.TritonError = _Tensor, _Response, _Error
    pb.get_input_tensor_by_name = lambda request, name: _Tensor(name, request.inputs[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    from runtime.serving.bls_model import TritonPythonModel

    params = {"mode": "pair", "levels": "2", "method": "fixed_point", "tol": "0.001", "stop_mode": "rel",
              "max_iter": "4", "idle_timeout_s": "60", "max_pixels": str(64 * 96), "hidden_dim": "8",
              "context_names": json.dumps(["corr_rows"]), "encoder_model": "e", "step_model": "s",
              "decode_model": "d"}
    m = TritonPythonModel()
    m.initialize({"model_config": json.dumps({"parameters": {k: {"string_value": v} for k, v in params.items()}})})
    return m


def _pair(h, w):
    img = np.zeros((1, 3, h, w), np.float32)
    return _Request(image1=img, image2=img.copy())


def test_oversized_frames_are_refused_in_one_line_and_the_others_still_answered(model, monkeypatch):
    answered = {"flow": np.zeros((1, 2, 64, 96), np.float32)}
    monkeypatch.setattr(model, "_solve", lambda a, b, state=None: (None, answered))
    big, ok = model.execute([_pair(128, 192), _pair(64, 96)])
    assert big.error.message == ("frame 128x192 has 24576 pixels, more than this server admits (6144, --max-size); "
                                 "send a smaller frame")
    assert ok.error is None and ok.outputs[0].name == "flow"


def test_a_failure_inside_the_model_reaches_the_client_without_traceback_or_paths(model, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError('Traceback (most recent call last):\n  File "/tmp/x/model.py", line 3\nboom')

    monkeypatch.setattr(model, "_solve", crash)
    (response,) = model.execute([_pair(64, 96)])
    message = response.error.message
    assert message == "the model failed on this request (RuntimeError); the server log has the details"
    assert "\n" not in message and "/tmp/" not in message and "Traceback" not in message
