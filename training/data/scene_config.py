"""Typed options of the synthetic scene generator, and its named presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from deqflow.errors import InputError
from training.data.homography import HomographyConfig
from training.data.photometric import PhotometricConfig
from training.data.textures import TextureConfig
from training.stages import REALISTIC_MIX_CLASSIC_SHARE


@dataclass(frozen=True)
class SyntheticConfig:
    """Scene options. Angles in degrees; (background, objects) pairs give the per-layer spread."""

    max_displacement: float = 64.0
    n_layers: tuple[int, int] = (2, 5)  # number of foreground objects, inclusive range
    photometric: bool = True  # brightness change, sensor noise and blur; off = exact rendering
    object_radius: tuple[float, float] = (0.06, 0.3)  # fraction of min(H, W)
    rotation_std: tuple[float, float] = (1.5, 6.0)
    log2_scale_range: tuple[float, float] = (0.03, 0.12)
    shear_range: tuple[float, float] = (0.02, 0.05)
    brightness_change: float = 0.06  # frame-to-frame gain change, fraction
    max_noise_sigma: float = 2.5  # Gaussian noise sigma ~ U(0, max), grey levels
    blur_prob: float = 0.25
    texture: TextureConfig = field(default_factory=TextureConfig)
    realism: RealismConfig | None = None  # None: the affine renderer of the shipped model's data

    def __post_init__(self) -> None:
        lo, hi = self.n_layers
        if not 0 <= lo <= hi <= 100:
            raise InputError(f"n_layers must be a range (lo, hi) with 0 <= lo <= hi <= 100, "
                             f"got {self.n_layers}")
        if self.max_displacement <= 0:
            raise InputError(f"max_displacement must be positive, got {self.max_displacement}")


@dataclass(frozen=True)
class RealismConfig:
    """The photograph-like renderer (realistic.py): camera homography, non-rigid object motion, a share
    of small and sub-pixel scenes, and camera effects between the frames. Amplitudes are in px."""

    homography: HomographyConfig = field(default_factory=HomographyConfig)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    small_motion_prob: float = 0.3  # chance that a whole scene moves at most small_motion_max px
    small_motion_max: tuple[float, float] = (0.5, 4.0)
    nonrigid_prob: float = 0.5  # chance per layer of a smooth deformation on top of its rigid motion
    nonrigid_amplitude: float = 0.08  # deformation amplitude, fraction of the scene's max displacement
    nonrigid_period: tuple[float, float] = (48.0, 160.0)  # its spatial scale, px
    object_follows_camera_prob: float = 0.6  # objects move with the camera, plus their own motion
    # Share of scenes drawn by the classic layered renderer instead (large affine motions up to
    # max_displacement, the same texture pool), so that fine-tuning on photograph-like data keeps seeing large
    # motions (checkpoints/deqflow-T-synthetic.md). 0 draws nothing extra from the generator, so the
    # "realistic" preset's samples stay what they were.
    classic_share: float = 0.0
    # Share of scenes rendered as a rectified stereo pair (the Middlebury motorcycle case): every layer is a
    # slanted plane whose motion is horizontal only, nearer layers (drawn later) with larger disparity, all of one
    # sign, the largest between half and all of max_displacement. 0 draws nothing extra, like classic_share.
    stereo_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("small_motion_prob", "nonrigid_prob", "object_follows_camera_prob", "classic_share",
                     "stereo_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be a probability, got {getattr(self, name)}")


def _realistic() -> SyntheticConfig:
    return SyntheticConfig(realism=RealismConfig(), texture=TextureConfig(photo_set="extended",
                                                                          photo_zoom=(-1.0, 1.2)))


def _realistic_mix() -> SyntheticConfig:
    base = _realistic()
    return replace(base, realism=replace(base.realism, classic_share=REALISTIC_MIX_CLASSIC_SHARE))


def _realistic_precise() -> SyntheticConfig:
    """realistic-mix with more small and sub-pixel scenes: half the photograph-like scenes move at most
    0.2-3 px (issue 24: the model trails DIS on smooth, small, well-textured motion)."""
    base = _realistic_mix()
    return replace(base, realism=replace(base.realism, small_motion_prob=0.5, small_motion_max=(0.2, 3.0)))


def _realistic_stereo() -> SyntheticConfig:
    """realistic-precise with a quarter of the photograph-like scenes rendered as rectified stereo pairs with
    large disparities (issue 24: the motorcycle pair, where the model trails DIS)."""
    base = _realistic_precise()
    return replace(base, realism=replace(base.realism, stereo_share=0.25))


# "classic" reproduces the data of the first two training phases; "realistic" is the photograph-like set;
# "realistic-mix" is that with 30 % classic layered scenes mixed in; "realistic-precise" that with more small motion;
# "realistic-stereo" that with rectified stereo scenes.
SYNTHETIC_PRESETS = {"classic": SyntheticConfig, "realistic": _realistic, "realistic-mix": _realistic_mix,
                    "realistic-precise": _realistic_precise, "realistic-stereo": _realistic_stereo}


def synthetic_preset(name: str) -> SyntheticConfig:
    """The scene options of a named preset."""
    if name not in SYNTHETIC_PRESETS:
        raise InputError(f"unknown synthetic data preset {name!r}; choose one of {sorted(SYNTHETIC_PRESETS)}")
    return SYNTHETIC_PRESETS[name]()
