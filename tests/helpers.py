"""Helpers shared by the test files: repository paths, the environment of a subprocess that runs this
checkout, an import blocker for torch-free runs, tiny checkpoints and ONNX exports.

Importing this module imports neither torch nor the export package (the torch-free tests use it too).
Run it as a script to regenerate the tiny ONNX fixture the torch-free tests run on:
`PYTHONPATH=. python tests/helpers.py`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import tempfile
from pathlib import Path

from deqflow.checkpoint import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OFFICIAL_DIR = FIXTURES / "official"  # the official-format DEQ-Flow-T fixture (see its README.md)
OFFICIAL_CKPT = OFFICIAL_DIR / "official-T-seed2.pth"
OFFICIAL_GOLDEN = FIXTURES / "golden" / "motorcycle-128x160-official-T-seed2-it8.npz"
SHIPPED_CKPT = ROOT / SHIPPED_CHECKPOINT
SHIPPED_GOLDEN = FIXTURES / "golden" / "motorcycle-128x160-deqflow-T-synthetic-it8.npz"

# The narrow encoders every tiny test model uses.
TINY_ENCODER_DIMS = (16, 24, 32)

# A randomly initialised DEQ-Flow-T, narrow enough that its split ONNX export stays small, committed so the
# torch-free tests have a model to run: encoder, step and decode graphs plus a torch float32 golden file.
TINY_ONNX_DIR = FIXTURES / "tiny"
TINY_ONNX = TINY_ONNX_DIR / "tiny-T-64x96.onnx"  # the split export's name; the parts are tiny-T-64x96.<part>.onnx
TINY_GOLDEN = TINY_ONNX_DIR / "tiny-T-64x96-it4.npz"
TINY_ONNX_SIZE = (64, 96)
TINY_ONNX_ITERS = 4
TINY_ONNX_MODEL = {"variant": "T", "encoder_dims": (8, 8, 8), "corr_levels": 2, "corr_radius": 2}


def subprocess_env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout's packages, one thread per library."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class ImportBlocker(importlib.abc.MetaPathFinder):
    """A meta-path finder that makes importing the named packages (and their submodules) fail as if they were
    not installed; `install` puts it first on sys.meta_path."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by the test run)", name=fullname)
        return None

    def install(self) -> ImportBlocker:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in self.names)
        if loaded:
            raise RuntimeError(f"cannot block {sorted(self.names)}: already imported ({', '.join(loaded[:3])})")
        sys.meta_path.insert(0, self)
        return self


def blocking_prelude(*names: str) -> str:
    """Python source that a child process runs first to block `names`, with this module's ImportBlocker."""
    return (f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"from helpers import ImportBlocker\nImportBlocker(*{names!r}).install()\n")


def tiny_model(seed: int = 0, solver: str = "fixed_point", max_iter: int = 4, **model):
    """A randomly initialised DEQ-Flow-T with narrow encoders (seeded: the same weights on every run)."""
    import torch

    from training.config import ModelConfig
    from training.deq.config import DEQConfig
    from training.model.deq_flow import DEQFlow

    torch.manual_seed(seed)
    fields = {"variant": "T", "encoder_dims": TINY_ENCODER_DIMS, **model}
    return DEQFlow(ModelConfig(**fields, deq=DEQConfig(f_solver=solver, f_max_iter=max_iter)))


def silence_flow_head(model, update_gain: float | None = None):
    """Zero the flow head's last layer, so every update moves the flow by exactly 0; with `update_gain` < 1 the
    update block's weight-norm gains shrink too, which makes the hidden-state update a contraction."""
    import torch

    with torch.no_grad():
        if update_gain is not None:
            for name, p in model.update_block.named_parameters():
                if name.endswith("weight_g"):
                    p.mul_(update_gain)
        model.update_block.flow_head.conv2.weight_g.zero_()
        model.update_block.flow_head.conv2.bias.zero_()
    return model


def save_tiny_checkpoint(path: Path, seed: int = 0, meta: dict | None = None, **kw) -> Path:
    """`tiny_model(seed, **kw)` saved as a deqflow checkpoint at `path`."""
    from fakes import save_model

    save_model(path, tiny_model(seed, **kw), meta if meta is not None else {"stage": "test"})
    return path


def export_layouts(checkpoint: Path, base: Path, layouts=("split", "unrolled"), **settings) -> dict[str, Path]:
    """ONNX exports of `checkpoint` in each layout (default: the golden files' 128x160 and 8 iterations)."""
    from export import export_onnx

    settings = {"height": 128, "width": 160, "iters": 8, **settings}
    out = {}
    for layout in layouts:
        out[layout] = base / f"m_{layout}.onnx"
        export_onnx(checkpoint, out[layout], layout=layout, **settings)
    return out


def write_tiny_onnx_fixture(folder: Path = TINY_ONNX_DIR) -> None:
    """Export the tiny model's split layout into `folder` with a torch float32 golden file of the real pair."""
    from deqflow.cli import main
    from export import export_onnx

    height, width = TINY_ONNX_SIZE
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # relative names in the golden metadata
        ckpt = save_tiny_checkpoint(Path("tiny.pth"), **TINY_ONNX_MODEL)
        export_onnx(ckpt, folder / TINY_ONNX.name, layout="split", height=height, width=width,
                    iters=TINY_ONNX_ITERS, levels=TINY_ONNX_MODEL["corr_levels"])
        rc = main(["compare", "--checkpoint", str(ckpt), "--iters", str(TINY_ONNX_ITERS), "--tol", "0",
                   "--size", f"{height}x{width}", "--pairs", "1", "--threads", "1",
                   "--save-golden", str(folder / TINY_GOLDEN.name), "--output", "report"])
    if rc != 0:
        raise SystemExit(f"deqflow compare failed ({rc})")


class HostStepParts:
    """Base of the hand-made `deqflow.host_solver.StepParts` in the solver tests: host arrays throughout, the
    decoded flow is coords1 - coords0 at both resolutions. Subclasses set coords0 and define encode/step."""

    coords0 = None

    def decode(self, ctx, net, coords1):
        return coords1 - self.coords0, coords1 - self.coords0

    def to_host(self, x):
        import numpy as np

        return np.asarray(x)

    def from_host(self, x):
        return x


if __name__ == "__main__":
    write_tiny_onnx_fixture()
    print("wrote", *sorted(p.name for p in TINY_ONNX_DIR.iterdir()))
