"""`export_onnx`: checkpoint -> ONNX file(s) in the requested layout, checked, written atomically.

Steps: load (variant checked) -> export copy (weight norm folded, eval, optional fp16 islands) -> trace the
encoder, step and decoder once each with the TorchScript exporter (dynamo=False: it keeps the correlation
ops and emits opset 17 GridSample) -> compose the layout -> metadata -> checks (+ onnxslim) -> optional
verification on the runtime's ONNX Runtime path (runtime.backends.onnxruntime_sessions; the split layout under
the shared host loop) -> temp files renamed into place.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from deqflow import __version__
from deqflow.errors import CheckpointError, DeqflowError, InputError
from deqflow.fileio import atomic_outputs, check_output_file
from deqflow.model_metadata import STOP_EXITS, ModelMetadata, split_part_names
from deqflow.onnx_integrity import record_weights_digest
from deqflow.solver_spec import SolveSpec, StopRule
from export.checks import CheckReport, check_model, count_nodes, simplify
from export.compose import Parts, build_loop, build_split, build_unrolled
from export.config import ExportConfig, check_size
from export.wrappers import DecodePart, EncoderPart, StepPart, ctx_names, prepare, reference_solve
from runtime.backends.onnxruntime_sessions import run_export
from training.model.deq_flow import DEQFlow

VERIFY_TOL = 1e-3  # px, float32 flow at full resolution (runtime.compare's float32 tier)


class ExportError(DeqflowError):
    """The export produced a graph that fails onnx.checker / shape inference / verification."""


@dataclass
class ExportResult:
    paths: list[Path]  # written files (three for the split layout: encoder, step, decode)
    config: ExportConfig
    metadata: dict[str, ModelMetadata]  # part -> metadata ('model' for unrolled/loop)
    reports: list[CheckReport]
    export_seconds: float
    nodes: dict[str, int]  # part -> node count (subgraphs included)
    verify: dict | None = None  # max |flow diff| etc. when config.verify
    iterations: int = 0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)


def load_for_export(source: str | os.PathLike | DEQFlow, variant: str | None) -> tuple[DEQFlow, str, str]:
    """(model, checkpoint sha256, checkpoint name); a DEQFlow instance is used as is (sha256 '')."""
    if isinstance(source, DEQFlow):
        if variant is not None and str(variant).upper() != source.cfg.variant:
            raise CheckpointError(f"the model is DEQ-Flow-{source.cfg.variant}, not the requested variant "
                                  f"{str(variant).upper()}")
        return source, "", "<in-memory model>"
    from training.checkpoint import load_model

    model, meta = load_model(source, variant=variant)
    return model, meta["sha256"], Path(source).name


def example_inputs(batch: int, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Trace/verify inputs: a smooth random image and a shifted copy (a non-trivial flow)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, height // 4 + 1, width // 4 + 1, generator=g)
    image1 = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear", align_corners=False) * 255
    image2 = torch.roll(image1, shifts=(3, -5), dims=(2, 3))
    return {"image1": image1.contiguous(), "image2": image2.contiguous(),
            "flow_init": torch.zeros(batch, 2, height // 8, width // 8)}


def _dynamic_axes(names: list[str], levels: int) -> dict[str, dict[int, str]]:
    low = {0: "batch", 2: "height_8", 3: "width_8"}
    table = {"image1": {0: "batch", 2: "height", 3: "width"}, "image2": {0: "batch", 2: "height", 3: "width"},
             "flow": {0: "batch", 2: "height", 3: "width"}, "corr_rows": {0: "pixels", 1: "corr_row_length"},
             "corr_fmap1": {0: "batch", 1: "pixels_8"}, "corr_fmap2": {0: "batch", 1: "corr_positions"},
             "residual": {0: "batch"}, "residual_rel": {0: "batch"}, "residual0": {0: "batch"},
             "attn": {0: "batch", 2: "hw_8", 3: "hw_8"}}
    for i in range(levels):
        table[f"corr_{i}"] = {0: "pixels", 2: f"corr{i}_height", 3: f"corr{i}_width"}
    return {n: table.get(n, low) for n in names}


def _trace(module: torch.nn.Module, args: tuple, inputs: list[str], outputs: list[str], opset: int,
           dynamic: bool, levels: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    module.eval()  # torch.onnx.export restores the wrapper's mode afterwards: it must already be eval
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape asserts, instance-norm training notice
        torch.onnx.export(module, args, buf, input_names=inputs, output_names=outputs, opset_version=opset,
                          dynamo=False, do_constant_folding=True,
                          dynamic_axes=_dynamic_axes(inputs + outputs, levels) if dynamic else None)
    return onnx.load_from_string(buf.getvalue())


def trace_parts(model: DEQFlow, cfg: ExportConfig, example: dict[str, torch.Tensor],
                example_model: DEQFlow | None = None) -> Parts:
    """Trace encoder, step and decoder of a prepared model at the example size.

    The step and decoder are traced on encoder outputs computed by `example_model` (default `model`): the
    values do not matter to the trace, and for mixed16 the float32 encoder is much faster on a CPU than the
    float16 one (the context tensors are float32 in both)."""
    levels = model.cfg.corr_levels
    enc = EncoderPart(model, cfg.lookup, cfg.flow_init).eval()
    step = StepPart(model, cfg.lookup).eval()
    dec = DecodePart(model).eval()
    enc_args = (example["image1"], example["image2"]) + ((example["flow_init"],) if cfg.flow_init else ())
    with torch.no_grad():
        outs = EncoderPart(example_model or model, cfg.lookup, cfg.flow_init).eval()(*enc_args)
    ctx = list(outs[: len(step.context)])
    net0, coords1 = outs[len(step.context)], outs[len(step.context) + 1]
    with torch.no_grad():
        net1, coords2, _, _ = step(*ctx, net0, coords1)
    coords0 = ctx[step.n_corr + 1]
    encoder = _trace(enc, enc_args, enc.input_names(), enc.output_names, cfg.opset, cfg.dynamic, levels)
    step_graph = _trace(step, (*ctx, net0, coords1), step.input_names(), step.output_names, cfg.opset,
                        cfg.dynamic, levels)
    decode = _trace(dec, (net1, coords2, coords0), dec.input_names(), dec.output_names, cfg.opset, cfg.dynamic,
                    levels)
    return Parts(encoder, step_graph, decode, ctx_names(model, cfg.lookup))


def _metadata(model: DEQFlow, cfg: ExportConfig, iters: int, stop_mode: str, sha: str, name: str,
              layout_part: str, proto: onnx.ModelProto, parts: dict[str, str], context: list[str]) -> ModelMetadata:
    hints = cfg.shape_hints()
    if hints is not None:
        shape_hints = hints.per_input(cfg.flow_init)
    else:
        static = {"image1": [cfg.batch, 3, cfg.height, cfg.width], "image2": [cfg.batch, 3, cfg.height, cfg.width]}
        if cfg.flow_init:
            static["flow_init"] = [cfg.batch, 2, cfg.height // 8, cfg.width // 8]
        shape_hints = {"min": static, "opt": static, "max": static}
    return ModelMetadata(
        variant=model.cfg.variant, layout=cfg.layout, part=layout_part, iterations=iters,
        solver="fixed_point", tolerance=float(cfg.tolerance), stop_mode=stop_mode, precision=cfg.precision,
        stall_window=model.cfg.deq.stall_window if cfg.layout == "split" else 0,
        stall_margin=model.cfg.deq.stall_margin, stop_exits=list(STOP_EXITS[cfg.layout]),
        flow_tol=float(model.cfg.deq.flow_tol) if cfg.layout == "split" else 0.0,
        warm_flow_tol=float(model.cfg.deq.warm_flow_tol) if cfg.layout == "split" else 0.0,
        lookup=cfg.lookup, opset=cfg.opset, dynamic=cfg.dynamic, batch=cfg.batch, height=cfg.height,
        width=cfg.width, shape_hints=shape_hints, flow_init=cfg.flow_init, hidden_dim=model.cfg.hidden_dim,
        corr_levels=model.cfg.corr_levels, corr_radius=model.cfg.corr_radius, parts=parts, context_names=context,
        inputs=[i.name for i in proto.graph.input], outputs=[o.name for o in proto.graph.output],
        checkpoint=name, checkpoint_sha256=sha, toolkit_version=__version__,
        exporter=f"torch {torch.__version__} TorchScript (dynamo=False) + deqflow compose, onnx {onnx.__version__}")


def _attach(proto: onnx.ModelProto, meta: ModelMetadata) -> None:
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta.to_props())
    proto.producer_name, proto.producer_version = "deqflow", __version__
    proto.doc_string = (f"deqflow {meta.layout} export ({meta.part}) of DEQ-Flow-{meta.variant}: read the "
                        "metadata_props (deqflow.model_metadata.read_metadata) for the input convention and solver.")


def atomic_save(files: list[tuple[Path, onnx.ModelProto]]) -> None:
    """Write every model, then rename them all into place (deqflow.fileio): never a half-written .onnx."""
    with atomic_outputs(*(path for path, _ in files)) as temporaries:
        for (_, proto), tmp in zip(files, temporaries):
            onnx.save(proto, str(tmp))


def _verify(model: DEQFlow, protos: dict[str, onnx.ModelProto], cfg: ExportConfig, iters: int, stop_mode: str,
            example: dict[str, torch.Tensor]) -> dict:
    feed = {k: v.numpy() for k, v in example.items() if cfg.flow_init or k != "flow_init"}
    ref = reference_solve(model, example["image1"], example["image2"], iters, cfg.lookup,
                          example["flow_init"] if cfg.flow_init else None, cfg.tolerance, stop_mode)
    spec = SolveSpec(stop=StopRule(tol=float(cfg.tolerance), stop_mode=stop_mode, max_iter=int(iters)))
    got = run_export(protos, feed, spec)
    diff = float(np.abs(got["flow"] - ref["flow"].numpy()).max())
    result = {"max_abs_flow_diff": diff, "iterations_torch": ref["iterations"],
              "iterations_onnx": int(got["iterations"][0]) if "iterations" in got else iters}
    tol = VERIFY_TOL if cfg.precision == "fp32" else 0.5
    if not diff <= tol or result["iterations_torch"] != result["iterations_onnx"]:
        raise ExportError(f"verification failed: ONNX Runtime vs PyTorch max |flow diff| {diff:.3g} px (limit {tol}), "
                          f"iterations {result['iterations_onnx']} vs {result['iterations_torch']}")
    return result


def export_onnx(source: str | os.PathLike | DEQFlow, output: str | os.PathLike, config: ExportConfig | None = None,
                **settings) -> ExportResult:
    """Export a DEQ-Flow checkpoint (or model) to ONNX. `settings` are ExportConfig fields overriding `config`.

    Returns the written paths, metadata and check reports. The split layout writes three files next to
    `output`: <stem>.encoder.onnx, <stem>.step.onnx, <stem>.decode.onnx. Raises InputError/CheckpointError
    for bad settings or weights and ExportError when the produced graph fails the ONNX checks.
    """
    cfg = config.with_changes(**settings) if config is not None else ExportConfig(**settings)
    output = Path(output)
    if output.suffix != ".onnx":
        raise InputError(f"output {output} must end in .onnx")
    check_output_file(output)  # before the model is loaded and traced
    start = time.perf_counter()
    model, sha, ckpt_name = load_for_export(source, cfg.variant)
    cfg = cfg.with_changes(levels=model.cfg.corr_levels)  # re-validates the sizes for this model
    check_size(cfg.height, cfg.width, cfg.levels)
    iters = int(cfg.iters or model.cfg.deq.eval_max_iter)
    stop_mode = cfg.stop_mode or model.cfg.deq.f_stop_mode
    prepared = prepare(model, cfg.precision)
    hints = cfg.shape_hints()
    size = hints.opt if hints is not None else None
    example = example_inputs(size.batch if size else cfg.batch, size.height if size else cfg.height,
                             size.width if size else cfg.width)
    parts = trace_parts(prepared, cfg, example, prepare(model) if cfg.precision == "mixed16" else None)

    if cfg.layout == "split":
        names = split_part_names(output)
        protos = build_split(parts)
        files = {part: output.parent / names[part] for part in protos}
    else:
        build = build_unrolled(parts, iters) if cfg.layout == "unrolled" else \
            build_loop(parts, iters, cfg.tolerance, stop_mode)
        protos, files, names = {"model": build}, {"model": output}, {}
    metas = {}
    for part, proto in protos.items():
        if cfg.simplify:
            proto = protos[part] = simplify(proto)
        metas[part] = _metadata(prepared, cfg, iters, stop_mode, sha, ckpt_name, part, proto, names, parts.context)
        _attach(proto, metas[part])
        record_weights_digest(proto)  # after _attach (it clears metadata_props); verified at every load
    reports = [check_model(proto, files[part]) for part, proto in protos.items()]
    bad = [r for r in reports if r.checker_error or r.shape_error]
    if bad:
        raise ExportError("the exported graph is invalid:\n" + "\n".join(r.format() for r in bad))
    verify = _verify(prepared, protos, cfg, iters, stop_mode, example) if cfg.verify else None
    atomic_save([(files[part], proto) for part, proto in protos.items()])
    for r, part in zip(reports, protos):
        r.path = str(files[part])
    return ExportResult(paths=list(files.values()), config=cfg, metadata=metas, reports=reports,
                        export_seconds=time.perf_counter() - start,
                        nodes={part: count_nodes(p.graph) for part, p in protos.items()}, verify=verify,
                        iterations=iters)
