"""ONNX graph surgery: the unrolled, Loop and split layouts from the three traced parts.

Why compose instead of tracing each layout: the TorchScript tracer unrolls Python loops and cannot emit a
`Loop`, and tracing N steps repeats the same work N times. Here the step is traced once; the unrolled graph
instantiates it N times (sharing its weights), the Loop graph uses it as the body with the correlation
pyramid, context and coords0 as outer-scope values, and the split layout keeps the pieces as separate
files. All layouts therefore run the very same nodes. Only `onnx` is imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class Parts:
    """Traced pieces; `context`: encoder outputs every step reads (correlation, inp, coords0[, attn])."""

    encoder: onnx.ModelProto
    step: onnx.ModelProto
    decode: onnx.ModelProto
    context: list[str]

    def __post_init__(self) -> None:
        for m in (self.encoder, self.step, self.decode):
            _materialise_outputs(m.graph)


def _materialise_outputs(graph: onnx.GraphProto) -> None:
    """Give every graph output a producing node (the exporter may output an initializer or an input)."""
    produced = {o for n in graph.node for o in n.output}
    for out in graph.output:
        if out.name not in produced:
            src = out.name
            fresh = f"{src}__value"
            for init in graph.initializer:
                if init.name == src:
                    init.name = fresh
            for inp in graph.input:
                if inp.name == src:
                    raise ValueError(f"graph output {src} is also a graph input; not supported")
            for n in graph.node:
                n.input[:] = [fresh if x == src else x for x in n.input]
            graph.node.append(helper.make_node("Identity", [fresh], [src], name=f"{src}__identity"))


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def instantiate(graph: onnx.GraphProto, prefix: str, io: dict[str, str], init_prefix: str) -> list[onnx.NodeProto]:
    """Copies of `graph`'s nodes: inputs/outputs renamed by `io`, initializers by `init_prefix`, every
    other value and node name by `prefix` (unique names across instances and nesting levels)."""
    inits = {i.name for i in graph.initializer}

    def rename(name: str) -> str:
        if not name:
            return name
        if name in io:
            return io[name]
        return init_prefix + name if name in inits else prefix + name

    nodes = []
    for i, node in enumerate(graph.node):
        if _has_subgraph(node):
            raise ValueError(f"part node {node.name} has a subgraph; parts must be flat")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename(x) for x in node.input]
        copy.output[:] = [rename(x) for x in node.output]
        copy.name = prefix + (node.name or f"{node.op_type}_{i}")
        nodes.append(copy)
    return nodes


def prefixed_initializers(graph: onnx.GraphProto, prefix: str) -> list[onnx.TensorProto]:
    out = []
    for init in graph.initializer:
        t = onnx.TensorProto()
        t.CopyFrom(init)
        t.name = prefix + init.name
        out.append(t)
    return out


def free_inputs(node: onnx.NodeProto) -> set[str]:
    """Values a node reads, including the outer-scope values its subgraphs read."""
    names = {x for x in node.input if x}
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            inner: set[str] = set()
            for n in g.node:
                inner |= free_inputs(n)
                local |= set(n.output)
            names |= inner - local
            names |= {o.name for o in g.output} - local
    return names


def prune(nodes: list[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """Drop nodes that do not contribute to `outputs` (e.g. residuals of intermediate unrolled steps)."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= free_inputs(node)
    return list(reversed(keep))


def _value_info(graph: onnx.GraphProto, name: str, new_name: str | None = None) -> onnx.ValueInfoProto:
    for vi in (*graph.input, *graph.output):
        if vi.name == name:
            out = onnx.ValueInfoProto()
            out.CopyFrom(vi)
            out.name = new_name or name
            return out
    raise KeyError(name)


def _finish(graph_name: str, nodes, inputs, outputs, initializers, like: onnx.ModelProto,
            doc: str) -> onnx.ModelProto:
    used: set[str] = set()
    for n in nodes:
        used |= free_inputs(n)
    inits = [i for i in initializers if i.name in used]
    graph = helper.make_graph(nodes, graph_name, inputs, outputs, initializer=inits, doc_string=doc)
    model = helper.make_model(graph, opset_imports=list(like.opset_import), producer_name="deqflow")
    model.ir_version = like.ir_version
    return model


def _all_initializers(parts: Parts) -> list[onnx.TensorProto]:
    return [*prefixed_initializers(parts.encoder.graph, "encoder/"),
            *prefixed_initializers(parts.step.graph, "step/"),
            *prefixed_initializers(parts.decode.graph, "decode/")]


def _encoder_nodes(parts: Parts) -> list[onnx.NodeProto]:
    g = parts.encoder.graph
    io = {v.name: v.name for v in (*g.input, *g.output)}
    return instantiate(g, "encoder/", io, "encoder/")


def _decode_nodes(parts: Parts, net: str, coords1: str) -> list[onnx.NodeProto]:
    g = parts.decode.graph
    io = {"net": net, "coords1": coords1, "coords0": "coords0", "flow": "flow", "flow_low": "flow_low"}
    return instantiate(g, "decode/", io, "decode/")


def _outputs(parts: Parts, with_iterations: bool) -> list[onnx.ValueInfoProto]:
    dec, step = parts.decode.graph, parts.step.graph
    outs = [_value_info(dec, "flow"), _value_info(dec, "flow_low"),
            _value_info(step, "residual"), _value_info(step, "residual_rel")]
    if with_iterations:
        outs.append(helper.make_tensor_value_info("iterations", TensorProto.INT32, [1]))
    return outs


def build_unrolled(parts: Parts, iters: int) -> onnx.ModelProto:
    """Encoder, `iters` copies of the step (shared weights), decoder."""
    nodes = _encoder_nodes(parts)
    net, coords = "net0", "coords1_init"
    sg = parts.step.graph
    for i in range(iters):
        last = i == iters - 1
        io = {c: c for c in parts.context}
        io.update(net=net, coords1=coords,
                  net_next=f"step{i}/net_next", coords1_next=f"step{i}/coords1_next",
                  residual="residual" if last else f"step{i}/residual",
                  residual_rel="residual_rel" if last else f"step{i}/residual_rel")
        nodes += instantiate(sg, f"step{i}/", io, "step/")
        net, coords = f"step{i}/net_next", f"step{i}/coords1_next"
    nodes += _decode_nodes(parts, net, coords)
    outputs = _outputs(parts, with_iterations=False)
    nodes = prune(nodes, [o.name for o in outputs])
    inputs = [_value_info(parts.encoder.graph, v.name) for v in parts.encoder.graph.input]
    doc = (f"DEQ-Flow, {iters} fixed-point steps unrolled (z <- f(z) from zero hidden state), then convex "
           "upsampling. Inputs: float RGB 0..255, H and W multiples of 8.")
    return _finish("deqflow_unrolled", nodes, inputs, outputs, _all_initializers(parts), parts.encoder, doc)


def build_loop(parts: Parts, iters: int, tolerance: float = 0.0, stop_mode: str = "abs") -> onnx.ModelProto:
    """Encoder, one ONNX Loop over the step, decoder. No stagnation exit (it needs the residual history).

    Trip count M = `iters` (an initializer). Without a tolerance the Loop has no condition input (a counted
    loop: TensorRT kCOUNT) and the body's condition output is its (true) condition input. With a tolerance
    the body outputs `max over the batch of the residual >= tolerance`, so the loop ends early once every
    sample has converged (the PyTorch solvers' rule); `iterations` reports the steps run. Carried: hidden
    state, coords1, both residuals and the step counter; invariant (outer scope): correlation, inp, coords0.
    """
    sg = parts.step.graph
    io = {c: c for c in parts.context}
    io.update(net="body/net", coords1="body/coords1", net_next="body/net_next",
              coords1_next="body/coords1_next", residual="body/residual_next",
              residual_rel="body/residual_rel_next")
    body_nodes = instantiate(sg, "body/", io, "body/weights/")
    body_nodes.append(helper.make_node("Add", ["body/count", "loop_one"], ["body/count_next"], name="body/count"))
    if tolerance > 0:
        sel = "body/residual_next" if stop_mode == "abs" else "body/residual_rel_next"
        body_nodes.append(helper.make_node("ReduceMax", [sel], ["body/residual_max"], keepdims=0,
                                           name="body/residual_max"))
        body_nodes.append(helper.make_node("GreaterOrEqual", ["body/residual_max", "loop_tolerance"],
                                           ["body/cond_out"], name="body/not_converged"))
    else:
        body_nodes.append(helper.make_node("Identity", ["body/cond_in"], ["body/cond_out"], name="body/cond"))
    vi = helper.make_tensor_value_info
    body_inputs = [vi("body/iter", TensorProto.INT64, []), vi("body/cond_in", TensorProto.BOOL, []),
                   _value_info(sg, "net", "body/net"), _value_info(sg, "coords1", "body/coords1"),
                   _value_info(sg, "residual", "body/residual"), _value_info(sg, "residual_rel", "body/residual_rel"),
                   vi("body/count", TensorProto.INT32, [1])]
    body_outputs = [vi("body/cond_out", TensorProto.BOOL, []),
                    _value_info(sg, "net_next", "body/net_next"), _value_info(sg, "coords1_next", "body/coords1_next"),
                    _value_info(sg, "residual", "body/residual_next"),
                    _value_info(sg, "residual_rel", "body/residual_rel_next"),
                    vi("body/count_next", TensorProto.INT32, [1])]
    # the step's weights live in the body: ONNX Runtime only re-lays out (NCHWc) convolutions whose weights are
    # initializers of the same graph, and TensorRT imports subgraph initializers like any other
    body = helper.make_graph(body_nodes, "deqflow_step", body_inputs, body_outputs,
                             initializer=prefixed_initializers(sg, "body/weights/"))

    consts = [numpy_helper.from_array(np.array(iters, dtype=np.int64), "loop_trip_count"),
              numpy_helper.from_array(np.array([1], dtype=np.int32), "loop_one"),
              numpy_helper.from_array(np.array([0], dtype=np.int32), "loop_count_init")]
    cond = ""
    if tolerance > 0:
        consts += [numpy_helper.from_array(np.array(tolerance, dtype=np.float32), "loop_tolerance"),
                   numpy_helper.from_array(np.array(True), "loop_cond_init")]
        cond = "loop_cond_init"
    loop = helper.make_node(
        "Loop", ["loop_trip_count", cond, "net0", "coords1_init", "residual0", "residual0", "loop_count_init"],
        ["net_final", "coords1_final", "residual", "residual_rel", "iterations"], name="deq_solver", body=body)
    nodes = [*_encoder_nodes(parts), loop, *_decode_nodes(parts, "net_final", "coords1_final")]
    outputs = _outputs(parts, with_iterations=True)
    nodes = prune(nodes, [o.name for o in outputs])
    inputs = [_value_info(parts.encoder.graph, v.name) for v in parts.encoder.graph.input]
    rule = f"stops once max residual ({stop_mode}) < {tolerance:g}" if tolerance > 0 else "no early exit"
    doc = (f"DEQ-Flow with the fixed-point solver as an ONNX Loop: at most {iters} steps, {rule} (no stagnation "
           "exit); then convex upsampling. Inputs: float RGB 0..255, H and W multiples of 8.")
    inits = [*prefixed_initializers(parts.encoder.graph, "encoder/"),
             *prefixed_initializers(parts.decode.graph, "decode/"), *consts]
    return _finish("deqflow_loop", nodes, inputs, outputs, inits, parts.encoder, doc)


def build_split(parts: Parts) -> dict[str, onnx.ModelProto]:
    """{'encoder': images -> context, 'step': context + (net, coords1) -> next state + residuals,
    'decode': (net, coords1, coords0) -> (flow, flow_low)}; the host runs the solver loop."""
    eg = parts.encoder.graph
    io = {v.name: v.name for v in (*eg.input, *eg.output)}
    nodes = prune(instantiate(eg, "", io, ""), parts.context)
    used = set().union(*(free_inputs(n) for n in nodes))
    inputs = [_value_info(eg, v.name) for v in eg.input if v.name in used]
    outputs = [_value_info(eg, c) for c in parts.context]
    encoder = _finish("deqflow_encoder", nodes, inputs, outputs, list(eg.initializer), parts.encoder,
                      "DEQ-Flow encoder: images (float RGB 0..255) -> correlation pyramid, context, coords0. "
                      "Host: net = 0, coords1 = coords0 (+ flow_init), then run the step graph.")
    sg, dg = parts.step.graph, parts.decode.graph
    step = _finish("deqflow_step", list(sg.node), list(sg.input), list(sg.output), list(sg.initializer),
                   parts.step, "One DEQ-Flow fixed-point step f(net, coords1) with the residual ||f(z)-z||.")
    decode = _finish("deqflow_decode", list(dg.node), list(dg.input), list(dg.output), list(dg.initializer),
                     parts.decode, "Convex upsampling of the final state: flow_low = coords1 - coords0, flow = 8x.")
    return {"encoder": encoder, "step": step, "decode": decode}
