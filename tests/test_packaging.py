"""The distribution's dependencies: `pip install deqflow` is the torch-free runtime, and nothing the runtime imports
is left out of it (scripts/check_runtime_install.py checks the real install; these tests guard the pieces)."""

import ast
import re
import sys

import numpy as np
import pytest
from helpers import FIXTURES, ROOT, TINY_GOLDEN

from deqflow.errors import MissingDependencyError
from deqflow.extras import LIBRARIES, TRAIN

CORE = {"numpy": "numpy", "opencv-python-headless": "cv2", "onnx": "onnx", "onnxruntime": "onnxruntime"}
# Imported by deqflow/runtime only inside a function, for a backend or a feature that names its extra when absent.
OPTIONAL = {"torch", "training", "tensorrt", "cuda", "pycuda", "skimage", "pytriton", "tritonclient",
            "polygraphy", "matplotlib"}  # compare --trace: its node comparison (debug extra) and its plot
IN_TRITON_ONLY = {"triton_python_backend_utils"}  # exists only inside Triton's python backend (bls_model.py)


def _requirements(items) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", item, maxsplit=1)[0].lower() for item in items}


@pytest.fixture(scope="module")
def project():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_plain_install_is_the_runtime(project):
    assert _requirements(project["dependencies"]) == set(CORE)
    extras = project["optional-dependencies"]
    assert {"train", "gpu", "pycuda", "serve", "dev"} <= set(extras)
    assert {"torch", "scikit-image", "matplotlib", "tqdm", "onnxslim"} <= _requirements(extras["train"])
    assert _requirements(extras["gpu"]) == {"tensorrt", "cuda-python"}  # onnxruntime-gpu replaces, never joins
    assert "pycuda" not in _requirements(extras["gpu"])
    assert _requirements(extras["debug"]) == {"polygraphy", "onnx-graphsurgeon"}  # compare --trace's nodes


def _third_party_imports(package: str) -> dict[str, set[str]]:
    """Top-level module name -> files of `package` that import it (anywhere in the file), stdlib left out."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root not in sys.stdlib_module_names and root not in ("deqflow", "runtime", "__future__"):
                    found.setdefault(root, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", ["deqflow", "runtime"])
def test_the_runtime_imports_only_core_or_optional_libraries(package):
    allowed = set(CORE.values()) | OPTIONAL | IN_TRITON_ONLY | {"google"}  # google.protobuf comes with onnx
    extra = {name: files for name, files in _third_party_imports(package).items() if name not in allowed}
    assert not extra, f"{package} imports libraries a runtime-only install lacks: {extra}"


def test_every_optional_library_names_how_to_install_it():
    from deqflow.cli import INSTALL

    assert set(INSTALL) == set(LIBRARIES)
    for module in OPTIONAL - {"training"}:
        assert "pip install" in INSTALL[module], module
    assert TRAIN in INSTALL["torch"] and TRAIN in INSTALL["skimage"]


def test_committed_pair_is_the_golden_files_real_pair():
    from deqflow.flow_io import read_flow
    from deqflow.image_io import read_image
    from deqflow.middlebury import real_pair

    pair = FIXTURES / "pair"
    a, b, flow, valid = real_pair((64, 96))
    np.testing.assert_array_equal(read_image(pair / "motorcycle-64x96-1.png"), a)
    np.testing.assert_array_equal(read_image(pair / "motorcycle-64x96-2.png"), b)
    gt, gt_valid = read_flow(pair / "motorcycle-64x96-gt.png")
    np.testing.assert_array_equal(gt_valid > 0, valid > 0)
    assert float(np.abs(gt - flow)[valid > 0].max()) < 1 / 64  # KITTI PNG's 1/64 px steps
    golden = np.load(TINY_GOLDEN)
    np.testing.assert_array_equal(golden["image1_0"], a)
    np.testing.assert_array_equal(golden["image2_0"], b)


def test_motorcycle_without_scikit_image_names_the_extra(monkeypatch):
    from deqflow.middlebury import real_pairs

    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` now raises ImportError
    with pytest.raises(MissingDependencyError) as exc:
        real_pairs((64, 96), 1)
    assert TRAIN in str(exc.value) and "\n" not in str(exc.value)


def test_nearest_points_is_exact_and_takes_the_first_of_equals():
    from runtime.warm_start import nearest_points

    rng = np.random.default_rng(0)
    points, queries = rng.uniform(0, 50, (300, 2)), rng.uniform(0, 50, (200, 2))
    brute = ((queries[:, None] - points[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(nearest_points(points, queries, block_elements=1000), brute)
    ties = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert nearest_points(ties, np.zeros((1, 2)))[0] == 0
    assert nearest_points(ties[::-1], np.zeros((1, 2)))[0] == 0
