"""deqflow: shared core of the DEQ-Flow toolkit (flow formats, padding, metrics, visualisation, atomic
writes, checkpoint handling, the real test pair, pair reports, the split layout's host solver and ONNX
Runtime sessions) and the `deqflow` command line.

This package never imports torch at import time: `runtime` builds on it on machines without PyTorch.
"""

__version__ = "0.1.0"

from deqflow.errors import (  # noqa: E402
    CheckpointError,
    DeqflowError,
    FileFormatError,
    InputError,
    MissingDependencyError,
)

__all__ = [
    "__version__",
    "DeqflowError",
    "InputError",
    "CheckpointError",
    "FileFormatError",
    "MissingDependencyError",
]
