"""The first diverging node: run a candidate ONNX graph and its float32 reference graph on the same inputs
with every intermediate tensor marked as an output, and find the first nodes, in topological order, whose
outputs depart beyond a per-dtype tolerance.

Polygraphy marks the outputs (polygraphy.backend.onnx.modify_outputs with MARK_ALL, as `polygraphy run
--onnx-outputs mark all` does) and builds the TensorRT network when the candidate runs on TensorRT;
onnx-graphsurgeon gives the nodes in topological order. Both come with the `debug` extra and are imported
only here, lazily. Tensors are matched by name; the mixed16 export's fp16 islands add a `/inner` scope (its
Cast16 / Keep32 wrappers) that `canonical_name` removes, and the Cast nodes it adds have no float32
counterpart: they are skipped and counted, as are other unmatched tensors. Graphs run with ONNX Runtime's
optimizations off, so every node's output is the one the graph names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from deqflow.errors import InputError
from deqflow.extras import require
from runtime.backends.onnxruntime_sessions import SessionConfig, create_session

FOR_WHAT = "the node comparison of deqflow compare --trace"
FP16_MAX = 65504.0
NODE_TOLERANCES: dict[str, dict[str, float]] = {
    "float32": {"rtol": 1e-4, "atol": 1e-5},
    "float16": {"rtol": 2e-2, "atol": 2e-3},
}
"""Per-dtype tolerance of one tensor: it departs when max |cand - ref| > atol + rtol * max |ref|. A tensor
takes the looser of its own dtype's and the comparison tier's tolerance (a float16 candidate's float32 tensors
carry the float16 error of the islands before them). Integer tensors must be equal."""

Runner = Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]]
"""(onnx.ModelProto with every tensor marked as an output, feeds) -> {tensor name: host array}."""


def polygraphy_onnx():
    return require("polygraphy.backend.onnx", FOR_WHAT, package="polygraphy")


def graphsurgeon():
    return require("onnx_graphsurgeon", FOR_WHAT)


def canonical_name(name: str) -> str:
    """A tensor name with the mixed16 export's wrapper scope removed: '/fnet/inner/conv1/Conv_output_0' ->
    '/fnet/conv1/Conv_output_0', so float16 islands match their float32 originals."""
    return re.sub(r"/inner(?=/)", "", name)


@dataclass(frozen=True)
class NodeInfo:
    order: int
    name: str
    op: str
    outputs: tuple[str, ...]


def graph_nodes(model) -> list[NodeInfo]:
    """The graph's nodes in topological order (onnx-graphsurgeon), Constants left out."""
    graph = graphsurgeon().import_onnx(model)
    graph.toposort()
    nodes = [n for n in graph.nodes if n.op != "Constant"]
    return [NodeInfo(i, n.name, n.op, tuple(t.name for t in n.outputs)) for i, n in enumerate(nodes)]


def mark_all(model):
    """A copy of `model` whose every intermediate tensor is also an output (Polygraphy)."""
    from polygraphy import constants

    return polygraphy_onnx().modify_outputs(model, outputs=constants.MARK_ALL, copy=True)


def onnxruntime_outputs(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of `model` on ONNX Runtime's CPU provider, optimizations off."""
    session = create_session(mark_all(model), SessionConfig(optimization="disable"))
    inputs = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feeds.items() if k in inputs})))


def tensorrt_outputs(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor of `model` on TensorRT, as a strongly typed network (the graph's own precision), through
    Polygraphy's TensorRT runner. Needs a GPU; not exercised by the CPU tests (scripts/gpu_acceptance.py)."""
    from polygraphy import constants

    trt = require("polygraphy.backend.trt", FOR_WHAT + " on TensorRT", package="tensorrt")
    network = trt.ModifyNetworkOutputs(trt.NetworkFromOnnxBytes(model.SerializeToString(), strongly_typed=True),
                                       outputs=constants.MARK_ALL)
    with trt.TrtRunner(trt.EngineFromNetwork(network, trt.CreateConfig())) as runner:
        inputs = set(runner.get_input_metadata().keys())
        out = runner.infer({k: v for k, v in feeds.items() if k in inputs})
    return {name: np.asarray(value) for name, value in out.items()}


RUNNERS: dict[str, Runner] = {"onnxruntime": onnxruntime_outputs, "tensorrt": tensorrt_outputs}


def _range(x: np.ndarray) -> dict[str, Any]:
    finite = x[np.isfinite(x)] if x.dtype.kind == "f" else x
    if finite.size == 0:
        return {"min": None, "max": None, "absmax": None, "nonfinite": int(x.size)}
    return {"min": float(finite.min()), "max": float(finite.max()), "absmax": float(np.abs(finite).max()),
            "nonfinite": int(x.size - finite.size)}


def tolerance(dtype: np.dtype, tier: str) -> dict[str, float]:
    """The (rtol, atol) a tensor of `dtype` is held to in `tier` (the looser of the two)."""
    own = NODE_TOLERANCES.get(np.dtype(dtype).name, NODE_TOLERANCES["float32"])
    floor = NODE_TOLERANCES.get(tier, NODE_TOLERANCES["float32"])
    return {k: max(own[k], floor[k]) for k in own}


def tensor_error(ref: np.ndarray, cand: np.ndarray, tier: str) -> dict[str, Any]:
    """Ranges of both tensors, the max abs error, its allowance and their ratio (> 1: departed); a NaN/Inf
    where the reference is finite, or a float16 value beyond 65504, departs with ratio None."""
    out: dict[str, Any] = {"dtype": cand.dtype.name, "shape": list(cand.shape), "reference": _range(ref),
                           "candidate": _range(cand)}
    r64, c64 = ref.astype(np.float64), cand.astype(np.float64)
    if cand.dtype.kind in "iub":
        err, allowed = float(np.abs(c64 - r64).max(initial=0.0)), 0.5
    else:
        tol = tolerance(cand.dtype, tier)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(c64 - r64)
        both = np.isfinite(diff)
        err = float(diff[both].max(initial=0.0))
        allowed = tol["atol"] + tol["rtol"] * (out["reference"]["absmax"] or 0.0)
    overflow = cand.dtype == np.float16 and (out["candidate"]["nonfinite"] > out["reference"]["nonfinite"]
                                             or (out["candidate"]["absmax"] or 0.0) > FP16_MAX)
    new_nonfinite = out["candidate"]["nonfinite"] > out["reference"]["nonfinite"]
    ratio = None if new_nonfinite else err / allowed
    return {**out, "max_abs_error": err, "allowed": allowed, "ratio": ratio, "fp16_overflow": bool(overflow),
            "departed": bool(new_nonfinite or ratio > 1.0)}


def _index(reference_nodes: list[NodeInfo]) -> dict[str, tuple[str, str]]:
    """canonical tensor name -> (reference tensor name, producing op)."""
    return {canonical_name(t): (t, n.op) for n in reference_nodes for t in n.outputs}


def compare_nodes(reference, candidate, feeds: dict[str, np.ndarray], tier: str = "float32", *,
                  runner: str = "onnxruntime", top: int = 5) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Both graphs (onnx.ModelProto) on `feeds`; every matched tensor's error, in the candidate's topological
    order: the first `top` departing ones, the `top` largest errors, and what could not be matched. Also
    returns the reference graph's own outputs (the next part's feeds)."""
    if runner not in RUNNERS:
        raise InputError(f"unknown node runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    ref_nodes, cand_nodes = graph_nodes(reference), graph_nodes(candidate)
    ref_out, cand_out = onnxruntime_outputs(reference, feeds), RUNNERS[runner](candidate, feeds)
    index, rows = _index(ref_nodes), []
    skipped = {"cast": 0, "unmatched": 0}
    for node in cand_nodes:
        for tensor in node.outputs:
            match = index.get(canonical_name(tensor))
            if tensor not in cand_out or match is None or match[0] not in ref_out \
                    or np.shape(ref_out[match[0]]) != np.shape(cand_out[tensor]) or match[1] != node.op:
                skipped["cast" if node.op == "Cast" else "unmatched"] += tensor in cand_out
                continue
            err = tensor_error(np.asarray(ref_out[match[0]]), np.asarray(cand_out[tensor]), tier)
            rows.append({"order": node.order, "node": node.name, "op": node.op, "tensor": tensor, **err})
    departed = [r for r in rows if r["departed"]]
    worst = sorted(rows, key=lambda r: (r["ratio"] is not None, -(r["ratio"] or 0.0)))
    report = {"runner": runner, "nodes": len(cand_nodes), "compared": len(rows), "skipped": skipped,
              "departed": len(departed), "first": departed[:top], "worst": worst[:top]}
    return report, {o.name: ref_out[o.name] for o in reference.graph.output if o.name in ref_out}


def load_graph(path):
    """onnx.ModelProto of `path` (a one-line error when it is missing)."""
    from pathlib import Path

    import onnx

    if not Path(path).is_file():
        raise InputError(f"ONNX model not found: {path}")
    return onnx.load(str(path))


def locate(reference: dict[str, Any], candidate: dict[str, Any], image1: np.ndarray, image2: np.ndarray,
           states: list[tuple[np.ndarray, np.ndarray]], iteration: int, tier: str, *, runner: str = "onnxruntime",
           top: int = 5) -> dict[str, Any]:
    """Node by node in each part of two split exports (`reference`, `candidate`: part -> path): the encoder on
    the images (iteration 0), the step on the reference state before `iteration` (states[iteration - 1]) with
    the reference encoder's context, the decoder on the state after it. The location is the first part with a
    departing node, and that node; None when no node departs (the deviation then builds up over iterations)."""
    n, _, h, w = image1.shape
    feeds = {"image1": image1, "image2": image2, "flow_init": np.zeros((n, 2, h // 8, w // 8), np.float32)}
    encoder, ctx = compare_nodes(load_graph(reference["encoder"]), load_graph(candidate["encoder"]), feeds, tier,
                                 runner=runner, top=top)
    net, coords1 = states[iteration - 1]
    step, _ = compare_nodes(load_graph(reference["step"]), load_graph(candidate["step"]),
                            {**ctx, "net": net, "coords1": coords1}, tier, runner=runner, top=top)
    net, coords1 = states[iteration]
    decode, _ = compare_nodes(load_graph(reference["decode"]), load_graph(candidate["decode"]),
                              {"net": net, "coords1": coords1, "coords0": ctx["coords0"]}, tier, runner=runner,
                              top=top)
    parts = {"encoder": {"iteration": 0, **encoder}, "step": {"iteration": iteration, **step},
             "decode": {"iteration": iteration, **decode}}
    location = None
    for part, found in parts.items():
        if found["first"]:
            first = found["first"][0]
            location = {"part": part, "iteration": found["iteration"], "node": first["node"], "op": first["op"],
                        "tensor": first["tensor"], "ratio": first["ratio"]}
            break
    return {"tier": tier, "location": location, "parts": parts}
