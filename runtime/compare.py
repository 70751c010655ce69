"""Accuracy of candidate backends against one float32 reference.

One reference (PyTorch eager float32, TF32 off, or an ONNX Runtime CPU float32 run, or a golden file from
any machine), many candidates, never candidate against candidate. Per output: max/mean abs error and
NaN/Inf counts; for the flow also the end-point error between the two flows (mean, p99, max) and the Fl-all
disagreement (% of pixels with EPE > 3 px and > 5 % of the reference magnitude). Each gated statistic gives
the smallest tolerance that would pass, and a tier (float32, float16) gives pass/fail. NaN/Inf always fails.

Golden files (.npz) keep inputs, reference outputs and version metadata (toolkit, onnxruntime, TensorRT,
torch, GPU, settings, model sha256), so results from different machines compare.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deqflow.errors import FileFormatError, InputError
from deqflow.fileio import atomic_write_bytes
from deqflow.metrics import FL_ABS, FL_REL
from runtime.preprocessing import prepare
from runtime.versions import version_info

GOLDEN_FORMAT = 1

# tier -> {criterion: limit}; criterion 'OUTPUT.STAT'. float32: a float32 engine on another device (max abs
# <= 1e-3 px, EPE p99 <= 1e-3, equal iteration counts); float16: reduced-precision engines.
TIERS: dict[str, dict[str, float]] = {
    "float32": {"flow.max_abs": 1e-3, "flow.epe_p99": 1e-3, "flow_low.max_abs": 1e-3, "iterations.max_abs": 0},
    "float16": {"flow.epe_mean": 0.05, "flow.epe_p99": 0.5, "flow.fl_all_pct": 0.1},
}


def _floats(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def output_stats(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    """max/mean abs error, max relative error and non-finite counts of one output."""
    ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
    if ref.shape != cand.shape:
        raise InputError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    bad_ref, bad_cand = int((~np.isfinite(ref)).sum()), int((~np.isfinite(cand)).sum())
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(cand - ref)
        finite = np.isfinite(diff)
        rel = diff / np.maximum(np.abs(ref), 1e-12)
    out = {"shape": list(ref.shape), "nonfinite_reference": bad_ref, "nonfinite_candidate": bad_cand,
           "max_abs": _floats(diff[finite].max()) if finite.any() else None,
           "mean_abs": _floats(diff[finite].mean()) if finite.any() else None,
           "max_rel": _floats(rel[finite].max()) if finite.any() else None}
    if bad_cand or bad_ref:
        out["max_abs"] = None  # NaN/Inf: no tolerance passes
    return out


def flow_stats(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    """EPE between two (N,2,H,W) flows (mean, p99, max) and the Fl-all disagreement in percent."""
    ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        epe = np.sqrt(((cand - ref) ** 2).sum(axis=1))
        mag = np.sqrt((ref**2).sum(axis=1))
    if not np.isfinite(epe).all():
        return {"epe_mean": None, "epe_p99": None, "epe_max": None, "fl_all_pct": None}
    return {"epe_mean": float(epe.mean()), "epe_p99": float(np.percentile(epe, 99)), "epe_max": float(epe.max()),
            "fl_all_pct": float(100.0 * ((epe > FL_ABS) & (epe > FL_REL * mag)).mean())}


def stack_outputs(outputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-pair output dicts -> one dict concatenated over pairs (common names only)."""
    names = set.intersection(*(set(o) for o in outputs)) if outputs else set()
    return {n: np.concatenate([np.atleast_1d(np.asarray(o[n])) for o in outputs], axis=0) for n in sorted(names)}


def compare_outputs(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], tier: str) -> dict[str, Any]:
    """Metrics, the criteria of `tier` with the measured value (= the smallest tolerance that would pass)."""
    if tier not in TIERS:
        raise InputError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    metrics: dict[str, dict] = {}
    for name in sorted(set(ref) & set(cand)):
        metrics[name] = output_stats(ref[name], cand[name])
        if name == "flow":
            metrics[name].update(flow_stats(ref[name], cand[name]))
    nonfinite = sum(m["nonfinite_candidate"] for m in metrics.values())
    criteria = []
    for crit, limit in TIERS[tier].items():
        out, stat = crit.split(".", 1)
        if out not in metrics:
            continue
        value = metrics[out].get(stat)
        passed = value is not None and value <= limit
        criteria.append({"criterion": crit, "value": value, "limit": limit, "passed": bool(passed)})
    passed = nonfinite == 0 and all(c["passed"] for c in criteria) and "flow" in metrics
    return {"metrics": metrics, "criteria": criteria, "nonfinite": int(nonfinite), "passed": bool(passed),
            "min_tolerance": {c["criterion"]: c["value"] for c in criteria}}


# --- golden files -----------------------------------------------------------------------------------------


@dataclass
class Golden:
    pairs: list[tuple[np.ndarray, np.ndarray]]  # uint8 RGB images
    outputs: list[dict[str, np.ndarray]]  # per pair, padded-size outputs
    meta: dict = field(default_factory=dict)


def save_golden(path: str | os.PathLike, pairs, outputs: list[dict[str, np.ndarray]], meta: dict) -> Path:
    """Inputs (uint8), outputs and metadata (+ versions) in one compressed .npz, written atomically."""
    import io

    arrays: dict[str, np.ndarray] = {}
    for i, ((a, b), out) in enumerate(zip(pairs, outputs)):
        arrays[f"image1_{i}"], arrays[f"image2_{i}"] = np.asarray(a, np.uint8), np.asarray(b, np.uint8)
        for name, value in out.items():
            arrays[f"{name}_{i}"] = np.asarray(value)
    full = {"format": GOLDEN_FORMAT, "pairs": len(pairs), "outputs": sorted(outputs[0]) if outputs else [],
            "versions": version_info(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta}
    arrays["meta"] = np.array(json.dumps(full))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_golden(path: str | os.PathLike) -> Golden:
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"golden file not found: {p}")
    try:
        data = np.load(p, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        raise FileFormatError(f"{p} is not a deqflow golden file ({exc})") from None
    if int(meta.get("format", 0)) > GOLDEN_FORMAT:
        raise FileFormatError(f"{p}: golden format {meta.get('format')} is newer than this toolkit reads")
    pairs, outputs = [], []
    for i in range(int(meta["pairs"])):
        pairs.append((data[f"image1_{i}"], data[f"image2_{i}"]))
        outputs.append({n: data[f"{n}_{i}"] for n in meta["outputs"]})
    return Golden(pairs, outputs, meta)


# --- running a comparison ----------------------------------------------------------------------------------


def run_outputs(backend, pairs, pad_mode: str = "sintel") -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """Outputs of `backend` on each uint8 pair (padded size, as the graphs output them) and seconds per pair."""
    outs, secs = [], []
    for a, b in pairs:
        batch = prepare(a, b, pad_mode)
        r = backend.infer(batch.image1, batch.image2)
        outs.append(r.outputs())
        secs.append(r.seconds)
    return outs, secs


def auto_tier(backend) -> str:
    desc = backend.describe()
    if desc.get("precision") == "mixed16" or desc.get("fp16"):
        return "float16"
    return "float32"


@dataclass
class CompareReport:
    reference: dict
    inputs: dict
    settings: dict
    candidates: list[dict]
    versions: dict = field(default_factory=version_info)
    allow_skip: bool = False  # candidates that could not be loaded do not fail the report (one must be measured)

    @property
    def passed(self) -> bool:
        measured = [c for c in self.candidates if not c.get("skipped")]
        skipped_ok = self.allow_skip or len(measured) == len(self.candidates)
        return all(c.get("passed") for c in measured) and skipped_ok and (bool(measured) or not self.candidates)

    def verdict(self) -> str:
        """One line: PASS or FAIL and why, naming skipped candidates and what to do about them."""
        skipped = [c["label"] for c in self.candidates if c.get("skipped")]
        if not skipped:
            return "PASS" if self.passed else "FAIL (see the candidates above)"
        names = ", ".join(skipped)
        if len(skipped) == len(self.candidates):
            return f"FAIL: nothing was compared: every candidate was skipped ({names})"
        if not self.allow_skip:
            return f"FAIL: candidate(s) skipped: {names}; fix them, or pass --allow-skip to accept a run without them"
        return f"{'PASS' if self.passed else 'FAIL'} (skipped, allowed by --allow-skip: {names})"

    def as_dict(self) -> dict:
        return {"passed": self.passed, "verdict": self.verdict(), "reference": self.reference, "inputs": self.inputs,
                "settings": self.settings,
                "candidates": self.candidates, "versions": self.versions, "tiers": TIERS}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def to_markdown(self) -> str:
        v = self.versions
        lines = ["# deqflow compare", "",
                 f"Reference: **{self.reference.get('label')}**; inputs: {self.inputs.get('source')} "
                 f"({self.inputs.get('pairs')} pair(s), {self.inputs.get('size')}); solver: "
                 f"{json.dumps(self.settings)}.", "",
                 f"Versions: deqflow {v.get('toolkit')}, onnxruntime {v.get('onnxruntime')}, TensorRT "
                 f"{v.get('tensorrt') or '-'}, torch {v.get('torch') or '-'}, GPU {v.get('gpu') or 'none'}.", "",
                 "| candidate | tier | result | flow max abs (px) | EPE mean | EPE p99 | Fl-all diff % | "
                 "flow_low max abs | iterations (ref / cand) | NaN/Inf |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for c in self.candidates:
            if c.get("error"):
                lines.append(f"| {c['label']} | {c.get('tier', '-')} | ERROR: {c['error']} | | | | | | | |")
                continue
            m = c["metrics"]
            f, fl = m.get("flow", {}), m.get("flow_low", {})
            verdict = "PASS" if c["passed"] else "FAIL"
            lines.append(f"| {c['label']} | {c['tier']} | {verdict} | {_fmt(f.get('max_abs'))} "
                         f"| {_fmt(f.get('epe_mean'))} | {_fmt(f.get('epe_p99'))} | {_fmt(f.get('fl_all_pct'))} | "
                         f"{_fmt(fl.get('max_abs'))} | {c.get('iterations_reference')} / "
                         f"{c.get('iterations_candidate')} | {c['nonfinite']} |")
        lines += ["", "Smallest tolerance that would pass (measured statistic) against the tier's limit:", ""]
        for c in self.candidates:
            if c.get("error"):
                continue
            parts = [f"{k} {_fmt(x['value'])} (limit {x['limit']:g})" for k, x in
                     ((cr["criterion"], cr) for cr in c["criteria"])]
            lines.append(f"- {c['label']}: " + "; ".join(parts))
        return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    if x is None:
        return "NaN/Inf"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def compare(reference, candidates: list, pairs=None, *, golden: Golden | None = None, tier: str = "auto",
            pad_mode: str = "sintel", settings: dict | None = None, inputs_label: str = "real") -> CompareReport:
    """Run `reference` (a Backend, or None with `golden`) and every candidate Backend on `pairs`; compare."""
    if golden is not None:
        pairs = golden.pairs
        ref_outputs = golden.outputs
        ref_info = {"label": f"golden {golden.meta.get('label', '')}".strip(), "golden": golden.meta}
    else:
        if not pairs:
            raise InputError("compare: no input pairs")
        ref_outputs, secs = run_outputs(reference, pairs, pad_mode)
        ref_info = {"label": reference.label, **reference.describe(), "seconds_per_pair": secs}
    ref = stack_outputs(ref_outputs)
    reports = []
    for cand in candidates:
        t = auto_tier(cand) if tier == "auto" else tier
        try:
            outs, secs = run_outputs(cand, pairs, pad_mode)
        except Exception as exc:  # a candidate that fails to run is a failed candidate, not a crash
            reports.append({"label": cand.label, "tier": t, "passed": False, "error": f"{type(exc).__name__}: {exc}"})
            continue
        got = stack_outputs(outs)
        result = compare_outputs(ref, got, t)
        reports.append({"label": cand.label, "tier": t, **result, "describe": cand.describe(),
                        "iterations_reference": [int(o["iterations"][0]) for o in ref_outputs],
                        "iterations_candidate": [int(o["iterations"][0]) for o in outs], "seconds_per_pair": secs})
    size = list(np.shape(pairs[0][0])[:2])
    return CompareReport(reference=ref_info, inputs={"source": inputs_label, "pairs": len(pairs), "size": size},
                         settings=settings or {}, candidates=reports)
