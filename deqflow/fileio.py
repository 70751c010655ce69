"""Writes that never leave half a file behind: every writer of the four packages goes through here.

The data goes to a hidden temporary file beside the target, which is renamed over the target only once it
is complete (the rename is atomic on POSIX and Windows), so readers see the old file or the whole new one,
and an interrupted run leaves neither a truncated file nor a stray temporary one.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deqflow.errors import DeqflowError, InputError

PathLike = str | os.PathLike


TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[0-9a-f]{8}\.tmp(\.[^.]+)?")
"""`.<target name>.<host>-<pid>.<random>.tmp<suffix>`: whose temporary file it is, so orphans can be found."""
STALE_SECONDS = 24 * 3600
"""A temporary file of another host untouched this long is abandoned (its writer's pid cannot be checked)."""


def writer_tag() -> str:
    """This process in a temporary file's name: its host (hashed: host names may hold dots) and pid."""
    return f"{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}-{os.getpid()}"


def temporary_sibling(path: PathLike) -> Path:
    """A unique hidden name in `path`'s folder that keeps its suffix (writers that pick a format by it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{writer_tag()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_orphan(tmp: Path, match: re.Match) -> bool:
    """Left by a dead process of this host, or by another host's process long ago."""
    host, pid = writer_tag().split("-")
    if match["host"] == host:
        return int(match["pid"]) != int(pid) and not _pid_alive(int(match["pid"]))
    return time.time() - tmp.stat().st_mtime > STALE_SECONDS


def remove_stale_temps(path: PathLike) -> list[Path]:
    """Delete the temporary files that killed writers left behind; returns the removed paths.

    `path`: a target file (its own temporary files) or a folder (every temporary file of ours in it, e.g. a
    training run's output folder at start). Only names this module makes are touched, and never a live
    writer's."""
    path = Path(path)
    folder, target = (path, None) if path.is_dir() else (path.parent, path.name)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.glob(".*.tmp*"):
        match = TEMP_NAME.fullmatch(tmp.name)
        if match is None or (target is not None and match["target"] != target):
            continue
        try:
            if tmp.is_file() and _is_orphan(tmp, match):
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # vanished meanwhile (its writer renamed it), or not ours to delete
            continue
    return removed


@contextmanager
def atomic_outputs(*paths: PathLike) -> Iterator[list[Path]]:
    """Temporary paths for `paths`, to be written inside the block; when the block completes they are all
    renamed over their targets, on an error they are removed and the targets stay as they were. Missing
    parent folders are created. The temporary files do not exist yet: writers create them (with the usual
    permissions, unlike mkstemp's 0600)."""
    targets = [Path(p) for p in paths]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
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


def check_output_dir(path: PathLike, flag: str = "--output") -> Path:
    """The folder `path` checked before any work is done: it may not exist yet (it is created later), but it
    must not be a file, and the nearest existing folder must be writable. One-line InputError otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is an existing file, not a folder: give a folder path")
    _check_writable_ancestor(path, flag)
    return path


def check_output_file(path: PathLike, flag: str = "--output", example: str = "model.onnx") -> Path:
    """The file `path` checked before any work: not a folder, its folder creatable and writable. `example`: a
    file name that the message suggests inside a folder given by mistake."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder: give a file path (e.g. {path / example})")
    _check_writable_ancestor(path.parent if str(path.parent) else Path("."), flag, shown=path)
    return path


def _check_writable_ancestor(folder: Path, flag: str, shown: Path | None = None) -> None:
    shown = shown or folder
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{flag} {shown}: {probe} is a file, so no folder can be created there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {shown}: cannot write in {probe} (read-only or no permission); choose another "
                         "location")


def save_results(path: PathLike, data: bytes, flag: str = "--output") -> Path:
    """Write computed results to `path` (atomically); when that write fails, the results are not lost: they go
    to a file in the system's temporary folder (or, failing that, to stdout) and the error says where."""
    import sys
    import tempfile

    try:
        return atomic_write_bytes(path, data)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        fallback = Path(tempfile.gettempdir()) / f"deqflow-{writer_tag()}-{Path(path).name}"
        try:
            atomic_write_bytes(fallback, data)
        except OSError:
            sys.stdout.write(data.decode(errors="replace") + "\n")
            kept = "they are printed above"
        else:
            kept = f"they were saved to {fallback} instead"
        raise DeqflowError(f"could not write {flag} {path} ({reason}); the results are not lost: {kept}") from None
