"""Model repositories for NVIDIA's Triton Inference Server (its container has the onnxruntime, TensorRT and
python backends), from a deqflow export:

- unrolled / loop layouts: `deqflow_flow` as an `onnxruntime_onnx` model, or as a `tensorrt_plan` when an
  engine built by `deqflow build` is given; dynamic batching when the export's batch axis is dynamic;
- split layout: `deqflow_encoder`, `deqflow_step`, `deqflow_decode` (one graph each), and the python-backend
  models `deqflow_flow` (pairs) and `deqflow_stream` (a Triton sequence per video, warm-started) that run the
  host solver with BLS calls to the three (runtime.serving.bls_model). With `parts="python"` the three graphs
  run with ONNX Runtime inside the python backend instead (for servers without the onnxruntime backend, such
  as the one PyTriton bundles).

Every config.pbtxt is written from plain data and checked against Triton's own `ModelConfig` protobuf (shipped
in tritonclient) when tritonclient is installed. The served protocol is deqflow serve's (runtime.serving.client
talks to both), except that a whole-graph model has no `iterations`/`batch`/`error` outputs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from deqflow.errors import FileFormatError, InputError
from deqflow.extras import optional
from deqflow.solver_spec import SolveSpec, StopRule
from runtime import SolveOverrides, open_model_file
from runtime.serving.protocol import FLOW_MODEL, FRAME_INPUT, STREAM_MODEL, Enum, sequence_batching

PART_MODELS = {"encoder": "deqflow_encoder", "step": "deqflow_step", "decode": "deqflow_decode"}
PART_BACKENDS = ("onnxruntime", "python")
DEVICES = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}
CHANNELS = {"flow": 2, "coords0": 2}  # axes the exporter leaves symbolic although they are fixed


@dataclass
class RepoOptions:
    """How the repository serves the export."""

    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    device: str = "gpu"  # instance_group kind of the graph models
    parts: str = "onnxruntime"  # split layout: how the three graphs are served
    plan: str | None = None  # TensorRT engine of a whole-graph export (tensorrt_plan)
    stream_idle_timeout_s: float = 60.0
    max_pixels: int = 0  # host-solver models refuse larger frames (0: any)
    settings: SolveOverrides = field(default_factory=SolveOverrides)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.parts not in PART_BACKENDS:
            raise InputError(f"parts must be one of {', '.join(PART_BACKENDS)}, got {self.parts!r}")
        if self.max_batch < 1 or self.instances < 1 or self.max_queue_delay_us < 0:
            raise InputError("max_batch and instances must be >= 1 and max_queue_delay_us >= 0")


# ---- config.pbtxt text --------------------------------------------------------------------------------------


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v) if isinstance(v, float) else str(v)


def pbtxt(message: dict, indent: int = 0) -> str:
    """Protobuf text format of a dict (nested dicts are messages, lists repeated fields; map fields as dicts
    under a 'parameters' key become key/value entries)."""
    pad, lines = "  " * indent, []
    for key, v in message.items():
        if key == "parameters" and isinstance(v, dict):
            for k, s in v.items():
                value = json.dumps(str(s))
                lines.append(f"{pad}parameters {{ key: {json.dumps(k)} value {{ string_value: {value} }} }}")
        elif isinstance(v, dict):
            lines += [f"{pad}{key} {{", pbtxt(v, indent + 1), f"{pad}}}"]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += [f"{pad}{key} {{", pbtxt(item, indent + 1), f"{pad}}}"]
        elif isinstance(v, list):
            lines.append(f"{pad}{key}: [ {', '.join(_value(x) for x in v)} ]")
        else:
            lines.append(f"{pad}{key}: {_value(v)}")
    return "\n".join(line for line in lines if line)


def parse_config(text: str):
    """Triton's ModelConfig message from config.pbtxt text; InputError naming the problem when it does not parse."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise InputError(f"config.pbtxt does not match Triton's ModelConfig schema: {exc}") from None


def _check(text: str) -> None:
    if optional("tritonclient.grpc.model_config_pb2") is not None:  # checked where tritonclient is installed
        parse_config(text)


# ---- tensors --------------------------------------------------------------------------------------------------


def onnx_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph: name, Triton type, dims (-1 for named axes)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(v) -> dict:
        t = v.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim]
        if v.name in CHANNELS and len(dims) == 4:
            dims[1] = CHANNELS[v.name]
        return {"name": v.name, "data_type": Enum(ONNX_TYPES.get(t.elem_type, "TYPE_FP32")), "dims": dims}

    initializers = {i.name for i in graph.initializer}
    return [spec(v) for v in graph.input if v.name not in initializers], [spec(v) for v in graph.output]


def batched(specs: list[dict]) -> list[dict]:
    """Drop the leading batch axis; a per-item scalar ((N,) tensors) becomes dims [1] reshaped to []."""
    out = []
    for s in specs:
        dims = s["dims"][1:]
        out.append({**s, "dims": dims or [1], **({} if dims else {"reshape": {"shape": []}})})
    return out


def _instances(options: RepoOptions, kind: str | None = None) -> list[dict]:
    return [{"count": options.instances, "kind": Enum(kind or DEVICES[options.device])}]


# ---- models ---------------------------------------------------------------------------------------------------


def _write(repo: Path, name: str, config: dict, files: dict[str, Path] | None = None) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    for target, source in (files or {}).items():
        shutil.copyfile(source, folder / "1" / target)
    text = pbtxt({"name": name, **config}) + "\n"
    _check(text)
    (folder / "config.pbtxt").write_text(text)
    return folder / "config.pbtxt"


def whole_graph_model(repo: Path, path: Path, options: RepoOptions, dynamic_batch: bool) -> Path:
    """deqflow_flow as one ONNX Runtime or TensorRT model (its solver is inside the graph)."""
    inputs, outputs = onnx_io(path)
    for s in inputs:
        if s["name"] == "flow_init":
            s["optional"] = True
    config: dict = {}
    if options.plan:
        config["platform"], files = "tensorrt_plan", {"model.plan": Path(options.plan)}
    else:
        config["platform"], files = "onnxruntime_onnx", {"model.onnx": path}
    if dynamic_batch:
        config.update(max_batch_size=options.max_batch, input=batched(inputs), output=batched(outputs),
                      dynamic_batching={"max_queue_delay_microseconds": options.max_queue_delay_us})
    else:
        config.update(max_batch_size=0, input=inputs, output=outputs)
    config["instance_group"] = _instances(options)
    return _write(repo, FLOW_MODEL, config, files)


def part_model(repo: Path, part: str, path: Path, options: RepoOptions) -> Path:
    """One graph of the split layout, batch axis included in its dims (corr_rows has none)."""
    inputs, outputs = onnx_io(path)
    config: dict = {"max_batch_size": 0, "input": inputs, "output": outputs}
    files = {"model.onnx": path}
    if options.parts == "onnxruntime":
        config = {"platform": "onnxruntime_onnx", **config, "instance_group": _instances(options)}
    else:
        config = {"backend": "python", **config, "instance_group": _instances(options, "KIND_CPU")}
        files["model.py"] = Path(__file__).with_name("onnx_part_model.py")
    return _write(repo, PART_MODELS[part], config, files)


def solver_parameters(file, options: RepoOptions, mode: str) -> dict[str, str]:
    meta = file.main
    s = options.settings.apply(SolveSpec(stop=StopRule(tol=float(meta.tolerance), stop_mode=meta.stop_mode,
                                                       max_iter=int(meta.iterations))))
    return {"mode": mode, "max_iter": str(s.stop.max_iter), "tol": str(s.stop.tol), "stop_mode": s.stop.stop_mode,
            "method": s.method, "hidden_dim": str(meta.hidden_dim), "context_names": json.dumps(meta.context_names),
            "levels": str(meta.corr_levels), "idle_timeout_s": str(options.stream_idle_timeout_s),
            "max_pixels": str(options.max_pixels),
            **{f"{part}_model": name for part, name in PART_MODELS.items()}}


def host_solver_models(repo: Path, file, options: RepoOptions) -> list[Path]:
    """deqflow_flow and deqflow_stream: python-backend models driving the three graphs through BLS."""
    fp32, i32, text = Enum("TYPE_FP32"), Enum("TYPE_INT32"), Enum("TYPE_STRING")
    image = {"data_type": fp32, "dims": [3, -1, -1]}
    scalar = {"dims": [1]}
    common = [{"name": "flow", "data_type": fp32, "dims": [2, -1, -1]},
              {"name": "iterations", "data_type": i32, **scalar}, {"name": "residual", "data_type": fp32, **scalar},
              {"name": "stop_reason", "data_type": text, **scalar}]
    model_py = {"model.py": Path(__file__).with_name("bls_model.py")}
    cpu = _instances(options, "KIND_CPU")
    flow = {"backend": "python", "max_batch_size": options.max_batch,
            "input": [{"name": "image1", **image}, {"name": "image2", **image}], "output": common,
            "dynamic_batching": {"max_queue_delay_microseconds": options.max_queue_delay_us},
            "instance_group": cpu, "parameters": solver_parameters(file, options, "pair")}
    stream = {"backend": "python", "max_batch_size": options.max_batch, "input": [{"name": FRAME_INPUT, **image}],
              "output": [*common, {"name": "warm", "data_type": i32, **scalar}],
              "sequence_batching": sequence_batching(options.stream_idle_timeout_s),
              "instance_group": cpu, "parameters": solver_parameters(file, options, "stream")}
    return [_write(repo, FLOW_MODEL, flow, model_py), _write(repo, STREAM_MODEL, stream, model_py)]


def write_repository(export: str | Path, repo: str | Path, options: RepoOptions | None = None) -> list[Path]:
    """Write the model repository for `export` into `repo`; returns the config.pbtxt paths."""
    options = options or RepoOptions()
    file = open_model_file(export)
    if file.kind != "onnx":
        raise InputError(f"{export}: a Triton repository is made from an ONNX export (give an engine with --plan)")
    repo = Path(repo)
    if file.is_split:
        if options.plan:
            raise InputError("--plan serves a whole-graph engine; the split layout's graphs are served as ONNX")
        configs = [part_model(repo, part, path, options) for part, path in file.parts.items()]
        return configs + host_solver_models(repo, file, options)
    if options.plan and not Path(options.plan).is_file():
        raise FileFormatError(f"TensorRT engine not found: {options.plan}")
    return [whole_graph_model(repo, file.parts["model"], options, bool(file.main.dynamic))]
