from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The 2 CI cores run two pytest workers: one intra-op thread each avoids oversubscription, which made
    torch ~10x slower when the cores were shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def official_T_path() -> Path:
    return OFFICIAL / "official-T-seed2.pth"


@pytest.fixture(scope="session")
def official_T_io():
    import numpy as np

    return dict(np.load(OFFICIAL / "official-T-seed2-io.npz"))
