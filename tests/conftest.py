from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"


@pytest.fixture(scope="session")
def official_T_path() -> Path:
    return OFFICIAL / "official-T-seed2.pth"


@pytest.fixture(scope="session")
def official_T_io():
    import numpy as np

    return dict(np.load(OFFICIAL / "official-T-seed2-io.npz"))
