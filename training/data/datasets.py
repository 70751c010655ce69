"""Optical-flow datasets in their standard folder layouts, and the official training-stage mixes.

Every dataset yields, RAFT-style, a tuple `(image1, image2, flow, valid)`: images (3,H,W) float32 in
0..255, flow (2,H,W) float32, valid (H,W) float32 0/1. Sparse data (KITTI, HD1K, stereo) take `valid`
from the file; dense data mark a pixel valid where |u| < 1000 and |v| < 1000 (unknown-flow markers in a
file are turned into huge values first, so they end up invalid after augmentation too). In `is_test`
mode (Sintel test, KITTI testing) a sample is `(image1, image2, extra_info)`.

Repetition is written as in the official stage mixes: `100 * sintel_clean + things` (int * dataset gives
a repeated view; `+` gives a torch ConcatDataset).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from deqflow.errors import InputError
from deqflow.flow_io import disparity_to_flow, read_disparity
from deqflow.image_io import read_image
from training.data.augment import AugmentConfig, stage_augment
from training.data.flow_dataset import FlowDataset, as_rgb
from training.data.synthetic import SyntheticFlowDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff")
FLOW_SUFFIXES = (".flo", ".png", ".pfm")


def _require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{what}: folder {path} does not exist; expected the layout {layout}")
    return path


def _sorted_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


class FlyingChairs(FlowDataset):
    """FlyingChairs: `<root>/NNNNN_img1.ppm, NNNNN_img2.ppm, NNNNN_flow.flo` (FlyingChairs_release/data).

    The official train/validation split is `chairs_split.txt` (one line per pair in sorted order, 1 =
    training, 2 = validation). It is looked for at `split_file`, then `<root>/chairs_split.txt`, then
    `<root>/../chairs_split.txt`; deqflow cannot regenerate it (it is not derivable from the data).
    """

    LAYOUT = "FlyingChairs_release/data/{00001_img1.ppm, 00001_img2.ppm, 00001_flow.flo, ...}"

    def __init__(self, root: str | os.PathLike = "datasets/FlyingChairs_release/data",
                 split: str = "training", split_file: str | os.PathLike | None = None,
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        super().__init__(augment, seed=seed)
        if split not in ("training", "validation"):
            raise InputError(f"FlyingChairs split must be 'training' or 'validation', got {split!r}")
        root = _require_dir(Path(root), "FlyingChairs", self.LAYOUT)
        flows = sorted(root.glob("*_flow.flo"))
        if not flows:
            raise InputError(f"FlyingChairs: no *_flow.flo files in {root}; expected {self.LAYOUT}")
        split_ids = _read_chairs_split(root, split_file, len(flows))
        wanted = 1 if split == "training" else 2
        for flow, sid in zip(flows, split_ids):
            if sid != wanted:
                continue
            stem = flow.name[: -len("_flow.flo")]
            pair = (root / f"{stem}_img1.ppm", root / f"{stem}_img2.ppm")
            if not (pair[0].is_file() and pair[1].is_file()):
                raise InputError(f"FlyingChairs: {flow.name} has no images {pair[0].name}, {pair[1].name}")
            self.image_list.append(pair)
            self.flow_list.append(flow)


def _read_chairs_split(root: Path, split_file: str | os.PathLike | None, n_flows: int) -> np.ndarray:
    candidates = [Path(split_file)] if split_file is not None else [root / "chairs_split.txt",
                                                                    root.parent / "chairs_split.txt"]
    for path in candidates:
        if path.is_file():
            ids = np.loadtxt(path, dtype=np.int64, ndmin=1)
            if len(ids) != n_flows or not np.isin(ids, (1, 2)).all():
                values = sorted(set(ids.tolist()))[:5]
                raise InputError(f"{path}: expected {n_flows} lines of 1 (training) or 2 (validation), one "
                                 f"per flow file, found {len(ids)} lines with values {values}")
            return ids
    looked = ", ".join(map(str, candidates))
    raise InputError(f"FlyingChairs: split file not found (looked at {looked}); put the official "
                     "chairs_split.txt (RAFT / DEQ-Flow repositories, 22872 lines of 1 or 2) there or pass "
                     "split_file=")


class FlyingThings3D(FlowDataset):
    """FlyingThings3D (subset as in RAFT): images `<root>/<dstype>/<split>/{A,B,C}/NNNN/<cam>/*.png`, flow
    `<root>/optical_flow/<split>/{A,B,C}/NNNN/{into_future,into_past}/<cam>/*.pfm`. Pairs are taken both
    forward (frame i -> i+1 with into_future flow of i) and backward (i+1 -> i with into_past flow of i+1)."""

    LAYOUT = ("FlyingThings3D/{frames_cleanpass,frames_finalpass}/TRAIN/A/0000/left/0006.png and "
              "FlyingThings3D/optical_flow/TRAIN/A/0000/into_future/left/OpticalFlowIntoFuture_0006_L.pfm")

    def __init__(self, root: str | os.PathLike = "datasets/FlyingThings3D", dstype: str = "frames_cleanpass",
                 split: str = "TRAIN", cameras: Sequence[str] = ("left",),
                 directions: Sequence[str] = ("into_future", "into_past"),
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        super().__init__(augment, seed=seed)
        if dstype not in ("frames_cleanpass", "frames_finalpass"):
            raise InputError(f"FlyingThings3D dstype must be frames_cleanpass or frames_finalpass, "
                             f"got {dstype!r}")
        root = Path(root)
        image_root = _require_dir(root / dstype / split, "FlyingThings3D", self.LAYOUT)
        flow_root = _require_dir(root / "optical_flow" / split, "FlyingThings3D", self.LAYOUT)
        sequences = sorted(p.relative_to(image_root) for p in image_root.glob("*/*") if p.is_dir())
        for cam in cameras:
            for direction in directions:
                for seq in sequences:
                    images = _sorted_files(image_root / seq / cam, (".png",))
                    flows = _sorted_files(flow_root / seq / direction / cam, (".pfm",))
                    if not images:
                        continue
                    if len(flows) != len(images):
                        raise InputError(f"FlyingThings3D: {flow_root / seq / direction / cam} holds "
                                         f"{len(flows)} flow files for {len(images)} frames in "
                                         f"{image_root / seq / cam}")
                    for i in range(len(images) - 1):
                        if direction == "into_future":
                            self.image_list.append((images[i], images[i + 1]))
                            self.flow_list.append(flows[i])
                        else:
                            self.image_list.append((images[i + 1], images[i]))
                            self.flow_list.append(flows[i + 1])
        if not self.image_list:
            raise InputError(f"FlyingThings3D: no frame pairs under {image_root}; expected {self.LAYOUT}")


class MpiSintel(FlowDataset):
    """MPI-Sintel: `<root>/<split>/<dstype>/<scene>/frame_XXXX.png`, flow `<root>/training/flow/<scene>/
    frame_XXXX.flo`. extra_info[i] = (scene, frame index from 0), what the submission writer needs."""

    LAYOUT = ("Sintel/{training,test}/{clean,final}/<scene>/frame_0001.png and "
              "Sintel/training/flow/<scene>/frame_0001.flo")

    def __init__(self, root: str | os.PathLike = "datasets/Sintel", split: str = "training",
                 dstype: str = "clean", augment: AugmentConfig | None = None, seed: int = 0) -> None:
        super().__init__(augment, seed=seed)
        if split not in ("training", "test"):
            raise InputError(f"Sintel split must be 'training' or 'test', got {split!r}")
        if dstype not in ("clean", "final"):
            raise InputError(f"Sintel dstype must be 'clean' or 'final', got {dstype!r}")
        root = Path(root)
        image_root = _require_dir(root / split, "Sintel", self.LAYOUT) / dstype
        _require_dir(image_root, "Sintel", self.LAYOUT)
        self.is_test = split == "test"
        for scene in sorted(p.name for p in image_root.iterdir() if p.is_dir()):
            images = _sorted_files(image_root / scene, (".png",))
            if not self.is_test:
                flows = _sorted_files(root / split / "flow" / scene, (".flo",))
                if len(flows) != len(images) - 1:
                    raise InputError(f"Sintel: {root / split / 'flow' / scene} holds {len(flows)} .flo files "
                                     f"for {len(images)} frames (expected one per frame but the last)")
                self.flow_list += flows
            for i in range(len(images) - 1):
                self.image_list.append((images[i], images[i + 1]))
                self.extra_info.append((scene, i))
        if not self.image_list:
            raise InputError(f"Sintel: no frame pairs under {image_root}; expected {self.LAYOUT}")


class KITTI(FlowDataset):
    """KITTI 2015: `<root>/{training,testing}/image_2/NNNNNN_10.png, NNNNNN_11.png`, sparse ground truth
    `<root>/training/flow_occ/NNNNNN_10.png`. extra_info[i] = the frame file name (NNNNNN_10.png)."""

    LAYOUT = ("KITTI/{training,testing}/image_2/000000_10.png, 000000_11.png; "
              "KITTI/training/flow_occ/000000_10.png")

    def __init__(self, root: str | os.PathLike = "datasets/KITTI", split: str = "training",
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        super().__init__(augment, sparse=True, seed=seed)
        if split not in ("training", "testing"):
            raise InputError(f"KITTI split must be 'training' or 'testing', got {split!r}")
        image_dir = _require_dir(Path(root) / split / "image_2", "KITTI", self.LAYOUT)
        self.is_test = split == "testing"
        for first in sorted(image_dir.glob("*_10.png")):
            second = first.with_name(first.name.replace("_10.png", "_11.png"))
            if not second.is_file():
                raise InputError(f"KITTI: {first} has no second frame {second.name}")
            self.image_list.append((first, second))
            self.extra_info.append(first.name)
            if not self.is_test:
                flow = Path(root) / split / "flow_occ" / first.name
                if not flow.is_file():
                    raise InputError(f"KITTI: ground truth {flow} is missing; expected {self.LAYOUT}")
                self.flow_list.append(flow)
        if not self.image_list:
            raise InputError(f"KITTI: no *_10.png frames in {image_dir}; expected {self.LAYOUT}")


class HD1K(FlowDataset):
    """HD1K: `<root>/hd1k_input/image_2/SSSSSS_FFFF.png`, sparse ground truth `<root>/hd1k_flow_gt/
    flow_occ/SSSSSS_FFFF.png`; consecutive frames of a sequence SSSSSS form pairs (one per flow file
    but the last, as the official loader)."""

    LAYOUT = "HD1k/hd1k_input/image_2/000000_0000.png and HD1k/hd1k_flow_gt/flow_occ/000000_0000.png"

    def __init__(self, root: str | os.PathLike = "datasets/HD1k", augment: AugmentConfig | None = None,
                 seed: int = 0) -> None:
        super().__init__(augment, sparse=True, seed=seed)
        root = Path(root)
        image_dir = _require_dir(root / "hd1k_input" / "image_2", "HD1K", self.LAYOUT)
        flow_dir = _require_dir(root / "hd1k_flow_gt" / "flow_occ", "HD1K", self.LAYOUT)
        pattern = re.compile(r"^(\d+)_\d+\.png$")
        sequences = sorted({m.group(1) for p in flow_dir.iterdir() if (m := pattern.match(p.name))})
        for seq in sequences:
            flows = sorted(flow_dir.glob(f"{seq}_*.png"))
            images = sorted(image_dir.glob(f"{seq}_*.png"))
            if len(images) < len(flows):
                raise InputError(f"HD1K: sequence {seq} has {len(flows)} flow files but {len(images)} frames")
            for i in range(len(flows) - 1):
                self.image_list.append((images[i], images[i + 1]))
                self.flow_list.append(flows[i])
                self.extra_info.append((seq, i))
        if not self.image_list:
            raise InputError(f"HD1K: no sequences in {flow_dir}; expected {self.LAYOUT}")


# --- generic sources ------------------------------------------------------------------------------


class FolderPairs(FlowDataset):
    """Any folder of frames with ground-truth flow.

    Frames are the images in `image_dir` (png, jpg, ppm, bmp, tif) sorted by file name (zero-pad the
    numbers); pairs are consecutive frames (i, i+1). The flow of pair i is the file in `flow_dir` (default
    `<image_dir>/flow`) named like frame i with the extension .flo, .png (KITTI 16-bit, sparse) or .pfm,
    tried in that order: frame `0007.jpg` -> `flow/0007.flo`. All flows of one folder must be all sparse
    (.png) or all dense. extra_info[i] = the first frame's file name.
    """

    def __init__(self, image_dir: str | os.PathLike, flow_dir: str | os.PathLike | None = None,
                 augment: AugmentConfig | None = None, seed: int = 0) -> None:
        image_dir = Path(image_dir)
        layout = "<image_dir>/0000.png, 0001.png, ... and <flow_dir>/0000.flo (or .png KITTI, .pfm), ..."
        _require_dir(image_dir, "FolderPairs", layout)
        flow_dir = image_dir / "flow" if flow_dir is None else Path(flow_dir)
        _require_dir(flow_dir, "FolderPairs", layout)
        if flow_dir.resolve() == image_dir.resolve():
            raise InputError(f"FolderPairs: keep the flow files in their own folder, not in {image_dir}")
        frames = _sorted_files(image_dir, IMAGE_SUFFIXES)
        if len(frames) < 2:
            raise InputError(f"FolderPairs: {image_dir} holds {len(frames)} image(s); need at least 2 frames")
        flows = []
        for frame in frames[:-1]:
            found = [p for p in (flow_dir / (frame.stem + s) for s in FLOW_SUFFIXES) if p.is_file()]
            if not found:
                names = ", ".join(frame.stem + s for s in FLOW_SUFFIXES)
                raise InputError(f"FolderPairs: no ground truth for frame {frame.name} in {flow_dir} "
                                 f"(tried {names})")
            flows.append(found[0])
        kinds = {f.suffix.lower() == ".png" for f in flows}
        if len(kinds) > 1:
            raise InputError(f"FolderPairs: {flow_dir} mixes sparse KITTI .png and dense flow files")
        super().__init__(augment, sparse=kinds.pop(), seed=seed)
        self.image_list = list(zip(frames[:-1], frames[1:]))
        self.flow_list = flows
        self.extra_info = [f.name for f in frames[:-1]]


class StereoPairDataset(FlowDataset):
    """One rectified stereo pair with ground-truth disparity, as a flow sample: flow = (-d, 0) from the
    left to the right image, invalid where d is not finite (or where a disparity file marks it invalid).

    `left`/`right` are uint8 images or image paths; `disparity` an (H,W) array or a .pfm / KITTI .png
    path. Sparse: the valid mask is carried through augmentation.
    """

    def __init__(self, left: np.ndarray | str | os.PathLike, right: np.ndarray | str | os.PathLike,
                 disparity: np.ndarray | str | os.PathLike, augment: AugmentConfig | None = None,
                 seed: int = 0) -> None:
        super().__init__(augment, sparse=True, seed=seed)
        self.left = as_rgb(left if isinstance(left, np.ndarray) else read_image(left))
        self.right = as_rgb(right if isinstance(right, np.ndarray) else read_image(right))
        if isinstance(disparity, np.ndarray):
            self.flow, self.valid = disparity_to_flow(disparity.astype(np.float32))
        else:
            self.flow, self.valid = disparity_to_flow(*read_disparity(disparity))
        if self.left.shape != self.right.shape or self.left.shape[:2] != self.flow.shape[:2]:
            raise InputError(f"StereoPairDataset: left {self.left.shape}, right {self.right.shape} and "
                             f"disparity {self.flow.shape[:2]} must have the same height and width")

    def num_samples(self) -> int:
        return 1

    def load_images(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.left.copy(), self.right.copy()

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        return self.left.copy(), self.right.copy(), self.flow.copy(), self.valid.copy()


# --- official stage mixes -------------------------------------------------------------------------

STAGES = ("chairs", "things", "sintel", "kitti", "synthetic")


def build_training_set(stage: str, root: str | os.PathLike = "datasets",
                       image_size: Sequence[int] = (368, 496), seed: int = 0,
                       synthetic_length: int = 20_000, synthetic_preset: str = "classic") -> Dataset:
    """The training set of a stage, augmented with its preset and cropped to `image_size` (H, W).

    `root` holds the standard layouts: FlyingChairs_release/data (+ chairs_split.txt), FlyingThings3D,
    Sintel, KITTI, HD1k. Official mixes: chairs = Chairs training split; things = Things clean + final;
    sintel = 100 x Sintel clean + 100 x final + 200 x KITTI + 5 x HD1K + Things clean; kitti = KITTI
    training. synthetic = generated scenes (no files), rendered 1.2x larger than the crop, with the scene
    options of `synthetic_preset` (scene_config.SYNTHETIC_PRESETS).
    """
    crop = (int(image_size[0]), int(image_size[1]))
    root = Path(root)
    if stage == "chairs":
        return FlyingChairs(root / "FlyingChairs_release" / "data", "training",
                            augment=stage_augment("chairs", crop), seed=seed)
    if stage == "things":
        aug = stage_augment("things", crop)
        return (FlyingThings3D(root / "FlyingThings3D", "frames_cleanpass", augment=aug, seed=seed)
                + FlyingThings3D(root / "FlyingThings3D", "frames_finalpass", augment=aug, seed=seed + 1))
    if stage == "sintel":
        aug = stage_augment("sintel", crop)
        clean = MpiSintel(root / "Sintel", "training", "clean", augment=aug, seed=seed)
        final = MpiSintel(root / "Sintel", "training", "final", augment=aug, seed=seed + 1)
        kitti = KITTI(root / "KITTI", "training", augment=stage_augment("sintel_kitti", crop), seed=seed + 2)
        hd1k = HD1K(root / "HD1k", augment=stage_augment("sintel_hd1k", crop), seed=seed + 3)
        things = FlyingThings3D(root / "FlyingThings3D", "frames_cleanpass", augment=aug, seed=seed + 4)
        return ConcatDataset([100 * clean, 100 * final, 200 * kitti, 5 * hd1k, things])
    if stage == "kitti":
        return KITTI(root / "KITTI", "training", augment=stage_augment("kitti", crop), seed=seed)
    if stage == "synthetic":
        size = (int(np.ceil(crop[0] * 1.2 / 8)) * 8, int(np.ceil(crop[1] * 1.2 / 8)) * 8)
        return SyntheticFlowDataset(size=size, length=synthetic_length, seed=seed,
                                    augment=stage_augment("synthetic", crop), preset=synthetic_preset)
    raise InputError(f"unknown training stage {stage!r}; choose one of {list(STAGES)}")
