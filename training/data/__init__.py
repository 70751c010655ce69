"""Training data: synthetic scenes with exact flow (classic and photograph-like presets), the held-out
real-photograph validation pairs, the standard dataset layouts and augmentation (tiny fake copies of the
layouts, for tests, are in tests/fake_layouts.py)."""

from training.data.augment import (
    STAGE_PRESETS,
    AugmentConfig,
    FlowAugmentor,
    SparseFlowAugmentor,
    resize_sparse_flow,
    stage_augment,
)
from training.data.datasets import (
    HD1K,
    KITTI,
    FlyingChairs,
    FlyingThings3D,
    FolderPairs,
    MpiSintel,
    StereoPairDataset,
    build_training_set,
)
from training.data.flow_dataset import FlowDataset
from training.data.homography import HomographyConfig
from training.data.photometric import PhotometricConfig
from training.data.photos import HELDOUT_PHOTOS, PHOTO_SETS, load_photo, photo_pool
from training.data.scene_config import SYNTHETIC_PRESETS, RealismConfig, SyntheticConfig, synthetic_preset
from training.data.synthetic import (
    SyntheticFlowDataset,
    SyntheticSample,
    SyntheticVideo,
    make_synthetic_video,
    render_pair,
)
from training.data.textures import PHOTO_NAMES, TextureConfig, photo_bank, random_texture

__all__ = [
    "AugmentConfig", "FlowAugmentor", "FlowDataset", "FlyingChairs", "FlyingThings3D", "FolderPairs", "HD1K",
    "HELDOUT_PHOTOS", "HomographyConfig", "KITTI", "MpiSintel", "PHOTO_NAMES", "PHOTO_SETS", "PhotometricConfig",
    "RealismConfig", "STAGE_PRESETS", "SYNTHETIC_PRESETS", "SparseFlowAugmentor", "StereoPairDataset",
    "SyntheticConfig", "SyntheticFlowDataset", "SyntheticSample", "SyntheticVideo", "TextureConfig",
    "build_training_set", "load_photo", "make_synthetic_video", "photo_bank", "photo_pool", "random_texture",
    "render_pair", "resize_sparse_flow", "stage_augment", "synthetic_preset",
]
