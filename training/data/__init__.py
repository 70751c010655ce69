"""Training data: synthetic scenes with exact flow, the standard dataset layouts, augmentation, and
tiny fake copies of the layouts for tests."""

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
    FlowDataset,
    FlyingChairs,
    FlyingThings3D,
    FolderPairs,
    MpiSintel,
    StereoPairDataset,
    build_training_set,
)
from training.data.fake_layouts import (
    write_fake_all,
    write_fake_chairs,
    write_fake_hd1k,
    write_fake_kitti,
    write_fake_sintel,
    write_fake_things,
)
from training.data.synthetic import (
    SyntheticConfig,
    SyntheticFlowDataset,
    SyntheticSample,
    SyntheticVideo,
    make_synthetic_video,
    render_pair,
)
from training.data.textures import PHOTO_NAMES, TextureConfig, photo_bank, random_texture

__all__ = [
    "HD1K", "KITTI", "PHOTO_NAMES", "STAGE_PRESETS", "AugmentConfig", "FlowAugmentor", "FlowDataset",
    "FlyingChairs", "FlyingThings3D", "FolderPairs", "MpiSintel", "SparseFlowAugmentor", "StereoPairDataset",
    "SyntheticConfig", "SyntheticFlowDataset", "SyntheticSample", "SyntheticVideo", "TextureConfig",
    "build_training_set", "make_synthetic_video", "photo_bank", "random_texture", "render_pair",
    "resize_sparse_flow", "stage_augment", "write_fake_all", "write_fake_chairs", "write_fake_hd1k",
    "write_fake_kitti", "write_fake_sintel", "write_fake_things",
]
