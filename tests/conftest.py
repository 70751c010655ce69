"""Shared fixtures, and the `--torch-free` run: `pytest --torch-free` blocks `import torch` before collection
and runs only tests/torchfree/, which proves the torch-free packages work where PyTorch is not installed."""

from pathlib import Path

import pytest
from helpers import OFFICIAL_CKPT, OFFICIAL_DIR, ImportBlocker, save_tiny_checkpoint

from deqflow.extras import optional

TORCH_FREE_DIR = Path(__file__).parent / "torchfree"


def pytest_addoption(parser):
    parser.addoption("--torch-free", action="store_true",
                     help="block `import torch` and run only the tests in tests/torchfree")


def pytest_configure(config):
    if not config.getoption("torch_free"):
        return
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path != TORCH_FREE_DIR and TORCH_FREE_DIR not in path.parents and path not in TORCH_FREE_DIR.parents:
            raise pytest.UsageError(f"--torch-free runs the tests in {TORCH_FREE_DIR} only, not {arg}")
    try:
        ImportBlocker("torch").install()
    except RuntimeError as exc:
        raise pytest.UsageError(f"--torch-free: {exc}") from None


def pytest_ignore_collect(collection_path, config):
    if config.getoption("torch_free") and collection_path.suffix == ".py" and \
            TORCH_FREE_DIR not in collection_path.parents:
        return True
    return None


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The 2 CI cores run two pytest workers: one intra-op thread each avoids oversubscription, which made
    torch much slower when the cores were shared. Torch is set only where it can be imported."""
    torch = optional("torch")
    if torch is None:  # the --torch-free run, or a machine without PyTorch
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def official_T_path() -> Path:
    return OFFICIAL_CKPT


@pytest.fixture(scope="session")
def official_T_io():
    import numpy as np

    return dict(np.load(OFFICIAL_DIR / "official-T-seed2-io.npz"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A seeded DEQ-Flow-T with narrow encoders and a 4-step fixed-point solver, saved as a checkpoint."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-T.pth")
