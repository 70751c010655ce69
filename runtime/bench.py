"""Latency of backends: warm-up, median/p90/p99, throughput, peak host (and device) memory; a regression gate.

Backends are timed in interleaved rounds (A, B, A, B, ...) so that a background load on a shared machine
hits all of them alike; the gate (`gate`) compares each backend's latency *ratio* to an anchor backend
measured in the same run with the same ratio in a baseline file, which survives a uniformly slower machine.
Host memory: Linux VmHWM (peak RSS) after resetting it (/proc/self/clear_refs) before each backend's load
and warm-up, so the figure is the peak while that backend was loaded and warmed up, the process's other
memory included; `host_rss_increase_mb` subtracts the RSS before its load. Device memory: the CUDA memory in
use after warm-up minus before load (torch or cuda-python), only when a GPU is present.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deqflow.errors import InputError
from runtime.versions import version_info


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """Latency statistics in milliseconds."""
    a = np.asarray(samples_s, np.float64) * 1e3
    if a.size == 0:
        raise InputError("no timing samples")
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()), "std": float(a.std())}


def _proc_status(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    return _proc_status("VmRSS")


def peak_rss_mb() -> float | None:
    return _proc_status("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def device_memory_used_mb() -> float | None:
    """CUDA memory in use on device 0 (torch if already imported, else cuda-python), None without a GPU."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                return (total - free) / 2**20
        except RuntimeError:
            return None
    from runtime.tensorrt.memory import import_cudart

    cudart = import_cudart()
    if cudart is None:
        return None
    try:
        err, free, total = cudart.cudaMemGetInfo()
    except Exception:
        return None
    return (total - free) / 2**20 if int(err) == 0 else None


@dataclass
class BenchCase:
    """One thing to time: a label, a factory that loads the backend, and the inputs it gets."""

    label: str
    factory: Callable[[], Any]
    size: tuple[int, int]
    batch: int = 1
    info: dict = field(default_factory=dict)


def _inputs(size: tuple[int, int], batch: int, source: str):
    from runtime.preprocessing import prepare, random_pair, real_pairs

    if source == "real":
        pairs = real_pairs(size, 1) * batch
    else:
        pairs = [random_pair(size, seed=i) for i in range(batch)]
    return prepare([p[0] for p in pairs], [p[1] for p in pairs])


def run_bench(cases: list[BenchCase], *, warmup: int = 2, runs: int = 10, inputs: str = "real",
              iterations: int | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Load, warm up and time every case; timed runs interleave the cases. Returns the JSON-ready report."""
    if warmup < 0 or runs < 1:
        raise InputError(f"warm-up must be >= 0 and runs >= 1, got {warmup} / {runs}")
    log = log or (lambda _msg: None)
    loaded, results = [], []
    for case in cases:
        entry: dict[str, Any] = {"label": case.label, "size": list(case.size), "batch": case.batch, **case.info}
        batch = _inputs(case.size, case.batch, inputs)
        rss0, dev0 = rss_mb(), device_memory_used_mb()
        resettable = reset_peak_rss()
        t0 = time.perf_counter()
        try:
            backend = case.factory()
        except Exception as exc:
            entry["skipped"] = f"{type(exc).__name__}: {exc}"
            log(f"  {case.label} {case.size[0]}x{case.size[1]}: skipped ({entry['skipped']})")
            results.append(entry)
            continue
        entry["load_s"] = time.perf_counter() - t0
        first = None
        try:
            for i in range(max(warmup, 1)):
                r = backend.infer(batch.image1, batch.image2)
                if i == 0:
                    first = r.seconds
        except Exception as exc:
            entry["skipped"] = f"{type(exc).__name__}: {exc}"
            log(f"  {case.label} {case.size[0]}x{case.size[1]}: skipped ({entry['skipped']})")
            backend.close()
            results.append(entry)
            continue
        entry.update(first_call_s=first, iterations=r.iterations, describe=backend.describe())
        peak = peak_rss_mb()
        entry["peak_host_rss_mb"] = peak
        known = peak is not None and rss0 is not None and resettable
        entry["host_rss_increase_mb"] = (peak - rss0) if known else None
        dev1 = device_memory_used_mb()
        entry["device_mb"] = (dev1 - dev0) if (dev0 is not None and dev1 is not None) else None
        loaded.append((entry, backend, batch, []))
        results.append(entry)
    for _ in range(runs):
        for _entry, backend, batch, samples in loaded:
            r = backend.infer(batch.image1, batch.image2)
            samples.append(r.seconds)
    for entry, backend, _batch, samples in loaded:
        entry["runs"] = len(samples)
        entry["latency_ms"] = percentiles(samples)
        entry["throughput_pairs_per_s"] = entry["batch"] / (entry["latency_ms"]["median"] / 1e3)
        entry["ms_per_iteration"] = entry["latency_ms"]["median"] / max(int(entry["iterations"]), 1)
        backend.close()
        log(f"  {entry['label']} {entry['size'][0]}x{entry['size'][1]} b{entry['batch']}: median "
            f"{entry['latency_ms']['median']:.1f} ms, p90 {entry['latency_ms']['p90']:.1f}, p99 "
            f"{entry['latency_ms']['p99']:.1f} ({entry['iterations']} iterations, {entry['runs']} runs)")
    return {"versions": version_info(), "settings": {"warmup": warmup, "runs": runs, "inputs": inputs,
                                                     "iterations": iterations},
            "results": results, "ratios": ratios(results)}


def _key(entry: dict) -> tuple:
    return (tuple(entry["size"]), int(entry["batch"]))


def ratios(results: list[dict], anchor: str | None = None) -> dict[str, dict[str, float]]:
    """{'HxW/bB': {label: median / anchor median}} for every size measured; the anchor is `anchor` or the
    first label that has a measurement at that size."""
    groups: dict[tuple, list[dict]] = {}
    for e in results:
        if "latency_ms" in e:
            groups.setdefault(_key(e), []).append(e)
    out = {}
    for (size, batch), entries in groups.items():
        base = next((e for e in entries if e["label"] == anchor), entries[0] if anchor is None else None)
        if base is None:
            continue
        out[f"{size[0]}x{size[1]}/b{batch}"] = {"anchor": base["label"], **{
            e["label"]: e["latency_ms"]["median"] / base["latency_ms"]["median"] for e in entries}}
    return out


def gate(current: dict, baseline: dict, *, tolerance: float = 0.15, anchor: str | None = None,
         mode: str = "auto") -> dict:
    """Regression gate. mode 'ratio': each backend's median / the anchor's median (same run) must not exceed
    the baseline's ratio by more than `tolerance` (relative); 'absolute': medians against the baseline's;
    'auto': ratio where an anchor is measured in both files, else absolute. Returns checks + `passed`."""
    if mode not in ("auto", "ratio", "absolute"):
        raise InputError(f"gate mode must be auto, ratio or absolute, got {mode!r}")
    if tolerance < 0:
        raise InputError(f"tolerance must be >= 0, got {tolerance}")
    cur_r, base_r = ratios(current["results"], anchor), ratios(baseline.get("results", []), anchor)
    base_by = {(e["label"], *_key(e)): e for e in baseline.get("results", []) if "latency_ms" in e}
    checks = []
    for e in current["results"]:
        if "latency_ms" not in e:
            continue
        k = f"{e['size'][0]}x{e['size'][1]}/b{e['batch']}"
        base = base_by.get((e["label"], *_key(e)))
        if base is None:
            continue
        use_ratio = mode != "absolute" and k in cur_r and k in base_r and cur_r[k]["anchor"] == base_r[k]["anchor"] \
            and e["label"] in base_r[k] and len(cur_r[k]) > 2
        if mode == "ratio" and not use_ratio:
            continue
        if use_ratio:
            if e["label"] == cur_r[k]["anchor"]:
                continue  # the anchor's ratio is 1 by definition
            now, before = cur_r[k][e["label"]], base_r[k][e["label"]]
            what = f"median / {cur_r[k]['anchor']}"
        else:
            now, before = e["latency_ms"]["median"], base["latency_ms"]["median"]
            what = "median ms"
        slower = now / before - 1.0
        checks.append({"label": e["label"], "size": k, "measure": what, "current": now, "baseline": before,
                       "slower_by": slower, "tolerance": tolerance, "passed": bool(slower <= tolerance)})
    return {"mode": mode, "tolerance": tolerance, "checks": checks, "passed": all(c["passed"] for c in checks),
            "compared": len(checks)}


def write_report(report: dict, path: str | os.PathLike) -> Path:
    from deqflow.fileio import atomic_write_bytes

    return atomic_write_bytes(path, json.dumps(report, indent=2, default=str).encode())


def markdown_table(report: dict) -> str:
    lines = ["| backend | size | batch | iterations | median ms | p90 ms | p99 ms | pairs/s | ms/iteration | "
             "peak RSS MiB | RSS increase MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in report["results"]:
        size = f"{e['size'][0]}x{e['size'][1]}"
        if "latency_ms" not in e:
            lines.append(f"| {e['label']} | {size} | {e['batch']} | - | skipped: {e.get('skipped', '')} | | | | | | |")
            continue
        lat = e["latency_ms"]
        inc = e.get("host_rss_increase_mb")
        lines.append(f"| {e['label']} | {size} | {e['batch']} | {e['iterations']} | {lat['median']:.1f} | "
                     f"{lat['p90']:.1f} | {lat['p99']:.1f} | {e['throughput_pairs_per_s']:.2f} | "
                     f"{e['ms_per_iteration']:.2f} | {e['peak_host_rss_mb']:.0f} | "
                     f"{'-' if inc is None else f'{inc:.0f}'} |")
    return "\n".join(lines) + "\n"
