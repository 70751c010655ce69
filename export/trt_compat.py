"""TensorRT compatibility report for an ONNX graph, without TensorRT.

Every node (including Loop/If/Scan bodies) is checked against what the TensorRT ONNX parser documents
(onnx-tensorrt docs/operators.md, TRT 10.15; importer behaviour from its source), as collected in
shared/reference/deployment.md section 3. The point is to catch, on a machine without a GPU, the graphs
that would fail to parse, or worse parse and run wrongly (GridSample's opset-20 mode names fall back to
nearest sampling without an error). It is a static check: passing it does not prove TensorRT runs the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

TRT_OPSET_MIN, TRT_OPSET_MAX = 9, 24  # TensorRT 10.15: "opset 9 to opset 24"
UNSUPPORTED_OPS = {
    # documented as unsupported by the TensorRT ONNX parser (operators.md: N)
    "Col2Im": "no TensorRT importer (F.fold); rewrite with Pad/Slice/Concat",
    "AffineGrid": "no TensorRT importer; build the sampling grid explicitly",
    "Unique": "data-dependent output shape; not supported",
    "SequenceAt": "sequence types are not supported",
    "SequenceConstruct": "sequence types are not supported",
    "SequenceEmpty": "sequence types are not supported",
    "SequenceErase": "sequence types are not supported",
    "SequenceInsert": "sequence types are not supported",
    "SequenceLength": "sequence types are not supported",
    "SequenceMap": "sequence types are not supported",
    "SplitToSequence": "sequence types are not supported",
    "ConcatFromSequence": "sequence types are not supported",
    "Optional": "optional types are not supported",
    "OptionalGetElement": "optional types are not supported",
    "OptionalHasElement": "optional types are not supported",
    "StringNormalizer": "string tensors are not supported",
    "TfIdfVectorizer": "not supported",
    "Im2Col": "not an ONNX operator (custom im2col from F.unfold)",
}
GRIDSAMPLE_MODES = ("nearest", "bilinear", "bicubic")  # all the importer knows; anything else -> kNEAREST
GRIDSAMPLE_PADDING = ("zeros", "border", "reflection")
AXES_INPUT_OPS = {  # op -> (first opset where `axes` is an input, input index): must be constant for TRT
    "ReduceSum": (13, 1), "ReduceMean": (18, 1), "ReduceMax": (18, 1), "ReduceMin": (18, 1),
    "ReduceProd": (18, 1), "ReduceL1": (18, 1), "ReduceL2": (18, 1), "ReduceLogSum": (18, 1),
    "ReduceLogSumExp": (18, 1), "ReduceSumSquare": (18, 1), "Squeeze": (13, 1), "Unsqueeze": (13, 1),
}
_ELEM_DOUBLE, _ELEM_STRING = 11, 8


@dataclass
class TrtIssue:
    severity: str  # 'error' (parse failure or wrong results expected) | 'warning' (works with a caveat)
    node: str  # node name ('<model>' for graph-level issues); subgraph nodes as 'loop_node/body_node'
    op_type: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.node} ({self.op_type}): {self.message}"


@dataclass
class TrtReport:
    """Result of `trt_compatibility`; `ok` is False when any issue is an error."""

    issues: list[TrtIssue] = field(default_factory=list)
    nodes_checked: int = 0
    opset: int = 0

    @property
    def errors(self) -> list[TrtIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[TrtIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def offending_nodes(self) -> list[str]:
        return [i.node for i in self.errors]

    def format(self) -> str:
        head = (f"TensorRT compatibility: {'OK' if self.ok else 'FAILED'} ({self.nodes_checked} nodes, opset "
                f"{self.opset}, {len(self.errors)} errors, {len(self.warnings)} warnings)")
        return "\n".join([head, *(f"  {i}" for i in self.issues)])


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _walk(graph, prefix: str = "") -> Iterator[tuple[str, object, object]]:
    """(qualified node name, node, graph it lives in), recursing into subgraph attributes."""
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}_{i}")
        yield name, node, graph
        for a in node.attribute:
            if a.g is not None and a.g.node:
                yield from _walk(a.g, name + "/")
            for g in a.graphs:
                yield from _walk(g, name + "/")


def _shapes(model) -> dict[str, tuple[int, list]]:
    """value name -> (elem_type, dims: int or str or None) over every graph, after shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # a report must still come out for graphs that shape inference rejects
        inferred = model
    out: dict[str, tuple[int, list]] = {}

    def add(vi) -> None:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            return
        dims = None
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        out[vi.name] = (t.elem_type, dims)

    def visit(g) -> None:
        for vi in (*g.input, *g.output, *g.value_info):
            add(vi)
        for init in g.initializer:
            out[init.name] = (init.data_type, list(init.dims))
        for n in g.node:
            for a in n.attribute:
                if a.g is not None and a.g.node:
                    visit(a.g)
                for sub in a.graphs:
                    visit(sub)

    visit(inferred.graph)
    return out


def _constants(graph) -> set[str]:
    names = {i.name for i in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def trt_compatibility(model) -> TrtReport:
    """Check a ModelProto against the TensorRT ONNX parser's documented support."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = TrtReport(opset=opset)
    add = report.issues.append
    if not TRT_OPSET_MIN <= opset <= TRT_OPSET_MAX:
        add(TrtIssue("error", "<model>", "opset", f"opset {opset} is outside TensorRT's supported range "
                                                   f"{TRT_OPSET_MIN}-{TRT_OPSET_MAX}"))
    shapes = _shapes(model)
    outer_constants = _constants(model.graph)
    for vi in (*model.graph.input, *model.graph.output):
        if vi.type.tensor_type.elem_type == _ELEM_STRING:
            add(TrtIssue("error", "<model>", "io", f"{vi.name}: string tensors are not supported"))
        if vi.type.tensor_type.elem_type == _ELEM_DOUBLE:
            add(TrtIssue("warning", "<model>", "io", f"{vi.name}: DOUBLE is cast down to FLOAT by TensorRT"))

    for name, node, graph in _walk(model.graph):
        report.nodes_checked += 1
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            add(TrtIssue("error", name, op, f"custom domain {node.domain!r}: needs a TensorRT plugin"))
            continue
        if op in UNSUPPORTED_OPS:
            add(TrtIssue("error", name, op, f"not supported by TensorRT's ONNX parser: {UNSUPPORTED_OPS[op]}"))
            continue
        if op == "GridSample":
            _check_gridsample(name, node, opset, shapes, add)
        elif op == "Loop":
            _check_loop(name, node, graph, shapes, outer_constants | _constants(graph), add)
        elif op == "If":
            _check_if(name, node, add)
        elif op == "Scan":
            add(TrtIssue("warning", name, op, "Scan is imported as a loop; scan outputs need a static length"))
        elif op == "AveragePool":
            dil = _attr(node, "dilations")
            if dil and any(d != 1 for d in dil):
                add(TrtIssue("error", name, op, "AveragePool dilations other than 1 are not supported"))
            dims = shapes.get(node.input[0], (0, None))[1]
            if dims is not None and len(dims) not in (4, 5):
                add(TrtIssue("error", name, op, f"AveragePool is 2-D/3-D only (input rank {len(dims)})"))
        elif op == "TopK":
            if _attr(node, "sorted", 1) != 1:
                add(TrtIssue("error", name, op, "TopK needs sorted=1"))
        elif op in ("ScatterND", "ScatterElements") and _attr(node, "reduction", "none") != "none":
            add(TrtIssue("error", name, op, "only reduction='none' is supported"))
        elif op == "Resize" and _attr(node, "antialias", 0):
            add(TrtIssue("error", name, op, "antialiased Resize is not supported"))
        if op in AXES_INPUT_OPS:
            first, idx = AXES_INPUT_OPS[op]
            if opset >= first and len(node.input) > idx and node.input[idx] \
                    and node.input[idx] not in outer_constants | _constants(graph):
                add(TrtIssue("error", name, op, f"`axes` ({node.input[idx]}) must be a constant or initializer; "
                                                f"fold constants first (polygraphy surgeon sanitize --fold-constants)"))
        for out in node.output:
            if out in shapes and shapes[out][0] == _ELEM_STRING:
                add(TrtIssue("error", name, op, f"{out}: string tensors are not supported"))
    return report


def _check_gridsample(name, node, opset, shapes, add) -> None:
    default_mode = "linear" if opset >= 20 else "bilinear"
    mode = _attr(node, "mode", default_mode)
    if mode not in GRIDSAMPLE_MODES:
        add(TrtIssue("error", name, "GridSample",
                     f"mode {mode!r}{' (the opset-20 default)' if _attr(node, 'mode') is None else ''} is unknown "
                     f"to TensorRT's parser ({'|'.join(GRIDSAMPLE_MODES)}); it silently falls back to NEAREST "
                     "sampling. Export at opset 17-19 (mode 'bilinear')"))
    pad = _attr(node, "padding_mode", "zeros")
    if pad not in GRIDSAMPLE_PADDING:
        add(TrtIssue("error", name, "GridSample", f"padding_mode {pad!r} is not supported"))
    for i, what in ((0, "input"), (1, "grid")):
        dims = shapes.get(node.input[i], (0, None))[1] if len(node.input) > i else None
        if dims is None:
            add(TrtIssue("warning", name, "GridSample", f"{what} rank unknown; TensorRT needs 4-D"))
        elif len(dims) != 4:
            add(TrtIssue("error", name, "GridSample", f"{what} is {len(dims)}-D; TensorRT supports 4-D only"))


def _check_loop(name, node, graph, shapes, constants, add) -> None:
    body = next(a.g for a in node.attribute if a.name == "body")
    n_carried = len(node.input) - 2
    n_scan = len(body.output) - 1 - n_carried
    trip = node.input[0] if node.input else ""
    cond = node.input[1] if len(node.input) > 1 else ""
    if n_scan > 0 and (not trip or trip not in constants):
        add(TrtIssue("error", name, "Loop", f"{n_scan} scan output(s) with a dynamic length (no constant trip "
                                            "count): TensorRT needs a static scan-output length"))
    elif n_scan > 0:
        add(TrtIssue("warning", name, "Loop", f"{n_scan} scan output(s): fine with the constant trip count"))
    if cond:
        add(TrtIssue("warning", name, "Loop",
                     "condition-controlled (while) loop: TensorRT imports it as kWHILE, which runs one more "
                     "iteration than ONNX Runtime (onnx/onnx-tensorrt#891, microsoft/onnxruntime#13894); compare "
                     "the iteration count, and prefer a constant trip count with no condition for TensorRT"))
    if not trip:
        add(TrtIssue("warning", name, "Loop", "no trip count: the loop is bounded only by its condition"))
    # carried values must keep their shape across iterations
    for k in range(n_carried):
        b_in, b_out = body.input[2 + k].name, body.output[1 + k].name
        s_in = shapes.get(b_in, (0, None))[1]
        s_out = shapes.get(b_out, (0, None))[1]
        init = shapes.get(node.input[2 + k], (0, None))[1]
        for a, b, what in ((s_in, s_out, "body input vs output"), (init, s_out, "initial value vs body output")):
            if a is None or b is None:
                continue
            if len(a) != len(b) or any(isinstance(x, int) and isinstance(y, int) and x and y and x != y
                                       for x, y in zip(a, b)):
                add(TrtIssue("error", name, "Loop", f"carried value {k} ({b_in} -> {b_out}) changes shape "
                                                    f"({what}: {a} vs {b}); TensorRT needs constant shapes"))
                break


def _check_if(name, node, add) -> None:
    branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
    if len(branches) != 2:
        return
    t, e = branches["then_branch"], branches["else_branch"]
    for a, b in zip(t.output, e.output):
        ra = len(a.type.tensor_type.shape.dim) if a.type.tensor_type.HasField("shape") else None
        rb = len(b.type.tensor_type.shape.dim) if b.type.tensor_type.HasField("shape") else None
        if ra is not None and rb is not None and ra != rb:
            add(TrtIssue("error", name, "If", f"branch outputs {a.name}/{b.name} differ in rank ({ra} vs {rb})"))
