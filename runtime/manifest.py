"""What produced a sequence's outputs: the manifest `deqflow infer --video/--folder` keeps in its output folder.

A rerun into the same folder reuses the finished frames only when the manifest says they were computed by
the same model (weights digest), backend, resolved solver settings and preprocessing, from the same input
(video: size and sha256 of the file; folder: frame names, sizes and modification times). Anything else is
refused before any work with the first difference named, so a resumed sequence never mixes two models,
two settings or two inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from deqflow.checkpoint import sha256_file
from deqflow.errors import InputError
from deqflow.fileio import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
FRAMES_LOG = "frames.jsonl"
SUMMARY_NAME = "summary.json"
FORMAT = "deqflow-infer-sequence/1"
FRAME_OUTPUTS: dict[str, tuple[str, str]] = {"flo": ("flow", ".flo"), "kitti": ("kitti", ".png"),
                                             "color": ("color", ".png")}
"""The output folder's layout: each output format -> (subfolder, suffix) of a frame's file, next to
FRAMES_LOG, SUMMARY_NAME and MANIFEST_NAME."""
RESULT_DIRS = tuple(folder for folder, _ in FRAME_OUTPUTS.values())


def frame_outputs(out_dir: Path, name: str, formats: list[str]) -> dict[str, Path]:
    """The files of frame `name` in `formats` (FRAME_OUTPUTS)."""
    return {f: out_dir / FRAME_OUTPUTS[f][0] / f"{name}{FRAME_OUTPUTS[f][1]}" for f in formats}


@dataclass
class SequenceManifest:
    """Identity of a sequence run. `model` / `backend` / `settings` / `processing` / `input` are compared
    field by field; `model_path` is informative only (the same weights may move)."""

    model: str  # weights digest (or sha256 of the model files when the backend records none)
    backend: str  # e.g. 'onnxruntime:cpu (split)'
    settings: dict  # resolved solver settings
    processing: dict  # pad mode, warm start, colour scale: anything else that changes the written frames
    input: dict  # video: kind, size, sha256; folder: kind, frames [[name, size, mtime_ns], ...]
    model_path: str = ""
    format: str = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    def differences(self, old: dict) -> list[str]:
        """What differs from a previous manifest (as read from JSON), in the user's words."""
        diffs = []
        if old.get("format") != self.format:
            return [f"manifest format {old.get('format')!r} (written by another deqflow version)"]
        if old.get("model") != self.model:
            diffs.append(f"model (weights {_short(old.get('model'))} from {old.get('model_path') or '?'}, now "
                         f"{_short(self.model)} from {self.model_path})")
        if old.get("backend") != self.backend:
            diffs.append(f"backend ({old.get('backend')}, now {self.backend})")
        diffs += _dict_diffs("solver setting", old.get("settings") or {}, self.settings)
        diffs += _dict_diffs("option", old.get("processing") or {}, self.processing)
        diffs += _input_diffs(old.get("input") or {}, self.input)
        return diffs


def _short(digest) -> str:
    return str(digest)[:12] if digest else "unknown"


def _dict_diffs(what: str, old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{what} {k} ({old.get(k)!r}, now {new.get(k)!r})" for k in keys if old.get(k) != new.get(k)]


def _input_diffs(old: dict, new: dict) -> list[str]:
    if old.get("kind") != new.get("kind"):
        return [f"input (a {old.get('kind')}, now a {new.get('kind')})"]
    if new.get("kind") == "video":
        if (old.get("size"), old.get("sha256")) != (new.get("size"), new.get("sha256")):
            return [f"input video ({old.get('size')} bytes, sha256 {_short(old.get('sha256'))}; now "
                    f"{new.get('size')} bytes, sha256 {_short(new.get('sha256'))})"]
        return []
    before = {f[0]: f[1:] for f in old.get("frames", [])}
    now = {f[0]: f[1:] for f in new.get("frames", [])}
    changed = sorted(n for n in before.keys() & now.keys() if before[n] != now[n])
    gone, added = sorted(before.keys() - now.keys()), sorted(now.keys() - before.keys())
    diffs = []
    for label, names in (("changed (size or time)", changed), ("missing", gone), ("new", added)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            diffs.append(f"input frames {label}: {', '.join(names[:3])}{more}")
    return diffs


def model_identity(backend, model_path: str | Path) -> str:
    """The backend's identity (its weights digest; a server's configuration hash), or the sha256 of the model
    file(s) when it records none."""
    digest = getattr(backend, "identity", "") or ""
    if digest:
        return digest
    file = getattr(backend, "file", None)
    paths = list(file.parts.values()) if file is not None else [Path(model_path)]
    return "+".join(sha256_file(p)[:16] for p in paths if Path(p).is_file()) or "unknown"


def has_results(out_dir: Path) -> bool:
    """Whether `out_dir` holds frame outputs of an earlier sequence run."""
    if (out_dir / FRAMES_LOG).is_file():
        return True
    return any(d.is_dir() and any(d.iterdir()) for d in (out_dir / n for n in RESULT_DIRS))


def check_resumable(out_dir: Path, manifest: SequenceManifest) -> bool:
    """True when `out_dir` holds results of the same run (resume), False when it holds none; InputError
    naming the difference otherwise (before any work: nothing is changed)."""
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        if has_results(out_dir):
            raise InputError(f"--output {out_dir} holds frame results without a {MANIFEST_NAME} (another tool or "
                             "an older deqflow): use --overwrite to recompute them, or another --output")
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} cannot be read ({exc}): use --overwrite to recompute, or another --output") \
            from None
    diffs = manifest.differences(old if isinstance(old, dict) else {})
    if diffs:
        more = f" (and {len(diffs) - 1} more difference(s))" if len(diffs) > 1 else ""
        raise InputError(f"--output {out_dir} holds results of another run: {diffs[0]} differs{more}; use "
                         "--overwrite to recompute, or another --output")
    return True


def clear_results(out_dir: Path) -> None:
    """--overwrite: remove the previous run's frame outputs, log, summary and manifest (only those files)."""
    for name, suffix in FRAME_OUTPUTS.values():
        folder = out_dir / name
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and p.suffix.lower() == suffix:
                    p.unlink()
    for name in (FRAMES_LOG, SUMMARY_NAME, MANIFEST_NAME):
        (out_dir / name).unlink(missing_ok=True)


def write_manifest(out_dir: Path, manifest: SequenceManifest) -> Path:
    return atomic_write_bytes(out_dir / MANIFEST_NAME, manifest.to_json())
