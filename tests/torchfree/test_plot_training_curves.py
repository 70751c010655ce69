"""scripts/plot_training_curves.py: phases chained on one CPU-hour axis (hand-computed offsets), and a clear
error for a curve without CPU hours."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("plot_training_curves", ROOT / "scripts" / "plot_training_curves.py")
plot_training_curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_training_curves)


def _curve(*points):
    return {"points": [{"step": s, "cpu_hours": h, "set": {"16": e}} for s, h, e in points]}


def test_phases_are_shifted_by_the_cpu_hours_before_them():
    first = _curve((100, 0.5, 2.0), (0, 0.0, 3.0), (200, 1.25, 1.5))  # unsorted on purpose
    second = _curve((0, 0.0, 1.5), (400, 0.75, 1.25))
    starts, phases = plot_training_curves.chain([first, second])
    assert starts == [0.0, 1.25]
    assert [(x, r["step"]) for x, r in phases[0]] == [(0.0, 0), (0.5, 100), (1.25, 200)]
    # the second phase's step 0 is the first phase's last weights: dropped, the rest shifted by 1.25 h
    assert [(x, r["step"]) for x, r in phases[1]] == [(2.0, 400)]


def test_a_curve_without_cpu_hours_is_refused():
    with pytest.raises(SystemExit, match="curve 2 has points without CPU hours"):
        plot_training_curves.chain([_curve((0, 0.0, 1.0)), _curve((0, 0.0, 1.0), (100, None, 1.0))])


def test_parallel_runs_share_the_origin():
    a = _curve((0, 0.0, 3.0), (100, 0.5, 2.0))
    b = _curve((100, 0.6, 1.8), (0, 0.0, 3.0))
    starts, runs = plot_training_curves.chain([a, b], parallel=True)
    assert starts == [0.0, 0.0]
    assert [(x, r["step"]) for x, r in runs[1]] == [(0.0, 0), (0.6, 100)]  # step 0 kept, nothing shifted
