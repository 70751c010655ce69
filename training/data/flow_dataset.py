"""The base of every flow dataset: a list of samples, optional augmentation, repetition, and the RAFT-style
(image1, image2, flow, valid) tensors. Its own module so that file layouts (datasets.py) and generated data
(synthetic.py) both build on it without importing each other."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deqflow.errors import InputError
from deqflow.flow_io import FLO_UNKNOWN_VALUE, read_flow, read_kitti_flow
from deqflow.image_io import read_image
from training.data.augment import AugmentConfig, FlowAugmentor, SparseFlowAugmentor

INVALID_FLOW = 1000.0  # dense rule: |component| >= this is invalid (official)

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def as_rgb(img: np.ndarray) -> np.ndarray:
    """uint8 (H,W), (H,W,1), (H,W,3) or (H,W,4) -> uint8 RGB (H,W,3)."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise InputError(f"expected an image of shape (H,W), (H,W,3) or (H,W,4), got {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


class FlowDataset(Dataset):
    """Base class: lists of image pairs and flow files, optional augmentation, repetition.

    Subclasses fill `image_list` (pairs of paths), `flow_list` and, for test splits, `extra_info`; or
    override `num_samples`/`load_sample` for data that do not come from files. `augmentor` is the hook
    called on uint8 RGB arrays: `(img1, img2, flow, rng)` for dense data, `(img1, img2, flow, valid, rng)`
    for sparse data; it is built from `augment` but may be replaced.
    """

    def __init__(self, augment: AugmentConfig | None = None, sparse: bool = False, seed: int = 0) -> None:
        self.sparse = sparse
        self.seed = seed
        self.augmentor: Any = None
        if augment is not None:
            self.augmentor = SparseFlowAugmentor(augment) if sparse else FlowAugmentor(augment)
        self.is_test = False
        self.image_list: list[tuple[Path, Path]] = []
        self.flow_list: list[Path] = []
        self.extra_info: list[Any] = []
        self.repeat = 1
        self._rng: np.random.Generator | None = None
        self._rng_pid = -1

    # ---- data access (override for generated data)
    def num_samples(self) -> int:
        return len(self.image_list)

    def load_images(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path1, path2 = self.image_list[index]
        return as_rgb(read_image(path1)), as_rgb(read_image(path2))

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """-> (img1, img2 uint8 RGB, flow (H,W,2) float32, valid (H,W) float32 or None for dense)."""
        img1, img2 = self.load_images(index)
        path = self.flow_list[index]
        if self.sparse:
            flow, valid = read_kitti_flow(path)
        else:
            flow, valid = read_flow(path)
            if valid is not None:  # unknown pixels in a dense file: let the dense rule reject them
                flow[valid < 0.5] = FLO_UNKNOWN_VALUE
                valid = None
        return img1, img2, flow, valid

    # ---- torch Dataset protocol
    def __len__(self) -> int:
        return self.repeat * self.num_samples()

    def __rmul__(self, times: int) -> FlowDataset:
        """`k * dataset`: a view that repeats the samples k times (the dataset itself is unchanged)."""
        if not isinstance(times, int) or times < 1:
            return NotImplemented
        out = copy.copy(self)
        out.repeat = self.repeat * times
        return out

    def _augment_rng(self) -> np.random.Generator:
        """One stream per process: a DataLoader worker seeds from its own worker seed, so workers differ
        and a run is reproducible when torch is seeded."""
        if self._rng is None or self._rng_pid != os.getpid():
            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, 0 if info is None else info.seed % 2**63])
            self._rng_pid = os.getpid()
        return self._rng

    def __getitem__(self, index: int) -> Sample | tuple[torch.Tensor, torch.Tensor, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index = index % self.num_samples()
        if self.is_test:
            img1, img2 = self.load_images(index)
            return _chw(img1), _chw(img2), self.extra_info[index]
        img1, img2, flow, valid = self.load_sample(index)
        if self.augmentor is not None:
            rng = self._augment_rng()
            if self.sparse:
                img1, img2, flow, valid = self.augmentor(img1, img2, flow, valid, rng)
            else:
                img1, img2, flow = self.augmentor(img1, img2, flow, rng)
        flow_t = _chw(flow)
        if valid is None:
            valid_t = ((flow_t[0].abs() < INVALID_FLOW) & (flow_t[1].abs() < INVALID_FLOW)).float()
        else:
            valid_t = torch.from_numpy(np.ascontiguousarray(valid, dtype=np.float32))
        return _chw(img1), _chw(img2), flow_t, valid_t


# --- standard layouts -----------------------------------------------------------------------------
