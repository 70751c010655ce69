"""Writes that never leave half a file behind: every writer of the four packages goes through here.

The data goes to a hidden temporary file beside the target, which is renamed over the target only once it
is complete (the rename is atomic on POSIX and Windows), so readers see the old file or the whole new one,
and an interrupted run leaves neither a truncated file nor a stray temporary one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PathLike = str | os.PathLike


def temporary_sibling(path: PathLike) -> Path:
    """A unique hidden name in `path`'s folder that keeps its suffix (writers that pick a format by it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextmanager
def atomic_outputs(*paths: PathLike) -> Iterator[list[Path]]:
    """Temporary paths for `paths`, to be written inside the block; when the block completes they are all
    renamed over their targets, on an error they are removed and the targets stay as they were. Missing
    parent folders are created. The temporary files do not exist yet: writers create them (with the usual
    permissions, unlike mkstemp's 0600)."""
    targets = [Path(p) for p in paths]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    temporaries = [temporary_sibling(t) for t in targets]
    try:
        yield temporaries
        for tmp, target in zip(temporaries, targets):
            os.replace(tmp, target)
    except BaseException:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_outputs). Returns the path written."""
    with atomic_outputs(path) as (tmp,):
        with open(tmp, "xb") as fh:  # "x": never clobber another writer's temporary file
            fh.write(data)
    return Path(path)
