"""Non-finite values: counted in one cheap pass in the common all-finite case, and model outputs that
hold them refused (a NaN flow written with exit status 0 is a silent wrong answer). numpy only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from deqflow.errors import NonFiniteOutputError


def count_nonfinite(array: Any) -> tuple[int, int] | None:
    """(NaN count, Inf count) of a floating array, or None when every value is finite.

    The float64 sum of the values is NaN/Inf exactly when some value is, so a finite array costs one
    reduction; the exact counts are computed only for a bad one. Non-floating arrays are finite."""
    values = np.asarray(array)
    if values.dtype.kind in "biu":
        return None
    if values.dtype.kind not in "fc":
        try:
            values = values.astype(np.float32)  # bfloat16 / float8 (ml_dtypes) arrays
        except (TypeError, ValueError):
            return None
    with np.errstate(all="ignore"):
        if np.isfinite(values.sum(dtype=np.complex128 if values.dtype.kind == "c" else np.float64)):
            return None
    nan = int(np.isnan(values).sum())
    inf = int(np.isinf(values).sum())
    return (nan, inf) if nan or inf else None


def check_finite_outputs(outputs: Mapping[str, Any], model: str, digest: str = "", where: str = "") -> None:
    """NonFiniteOutputError naming the model file, its digest and every output that holds NaN/Inf.

    outputs: {name: array} of one inference call (flow, residual...; None and non-numeric entries skipped);
    where: what was being computed (e.g. a frame name), for the message."""
    bad = []
    for name, value in outputs.items():
        if value is None or isinstance(value, (str, bytes)):
            continue
        array = np.asarray(value)
        if array.dtype.kind in "OSU":
            continue
        counts = count_nonfinite(array)
        if counts is not None:
            bad.append(f"{name} has {counts[0]} NaN and {counts[1]} Inf of {array.size} values")
    if bad:
        weights = f" (weights {digest[:12]})" if digest else ""
        at = f" for {where}" if where else ""
        raise NonFiniteOutputError(f"{model}{weights} produced non-finite output{at}: {'; '.join(bad)}. Nothing was "
                                   "written for it; the model file may be damaged or the solve diverged")
