"""Per-stage training defaults of the official recipe (official-deqflow.md) plus the synthetic stage.

chairs/things follow DEQ-Flow's train_H.sh; sintel/kitti follow RAFT's schedule (DEQ-Flow v2.0 ships
no fine-tuning script); synthetic is deqflow's CPU-sized stage on generated data.
"""

from __future__ import annotations

from dataclasses import dataclass

REALISTIC_MIX_CLASSIC_SHARE = 0.3
"""Share of classic layered scenes in the synthetic stage's "realistic-mix" preset (training.data.scene_config);
here, torch-free, so that `deqflow train --help` can state it."""

VAL_REAL_STEPS = (16, 60)
"""Iterations after which --val-real scores the held-out real photographs (training.heldout_eval): an early
iterate and the 60-iteration evaluation mark, accuracy and drift, cheaply."""


@dataclass(frozen=True)
class StageDefaults:
    num_steps: int
    batch_size: int
    lr: float
    image_size: tuple[int, int]
    wdecay: float
    gamma: float
    f_max_iter: int
    n_states: int
    phantom_grad: int
    all_grad: bool
    freeze_bn: bool
    validation: tuple[str, ...]


STAGES: dict[str, StageDefaults] = {
    "chairs": StageDefaults(120_000, 12, 4e-4, (368, 496), 1e-4, 0.8, 36, 6, 1, False, False, ("chairs",)),
    "things": StageDefaults(120_000, 6, 1.25e-4, (400, 720), 1e-4, 0.8, 40, 2, 3, True, True, ("sintel",)),
    "sintel": StageDefaults(100_000, 6, 1.25e-4, (368, 768), 1e-5, 0.85, 40, 2, 3, True, True, ("sintel",)),
    "kitti": StageDefaults(50_000, 6, 1e-4, (288, 960), 1e-5, 0.85, 40, 2, 3, True, True, ("kitti",)),
    "synthetic": StageDefaults(20_000, 4, 4e-4, (192, 256), 1e-4, 0.8, 12, 3, 1, False, False, ("synthetic",)),
}
