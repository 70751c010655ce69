"""The memory plan: a run's estimated peak memory, by part, checked against the memory available, before any
model is loaded.

The all-pairs correlation volume grows with the square of the pixel count ((H/8 * W/8)^2 values at level 0,
about 4/3 of that for the pyramid), so past some frame size a run needs more memory than the machine has: the
plan says so in one line before anything heavy happens, and `--corr auto` picks the on-demand ("local")
correlation, whose memory grows with the pixel count, when the all-pairs one would not fit comfortably.

The estimates are first-principles byte counts of the tensors alive at the peak; the few constants that are
not (a backend's own resident memory, how many activation copies live at once) were calibrated against
measured peak resident memory of real runs (scripts/calibrate_memory_plan.py writes docs/memory_plan.json;
tests/test_memory_plan.py checks the estimate stays within 25% of a measurement). Torch-free.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from deqflow.errors import InputError, MemoryPlanError

CORR_MODES = ("all-pairs", "local")
CORR_CHOICES = ("auto", *CORR_MODES)
LOOKUP_MODES = {"grid_sample": "all-pairs", "gather": "all-pairs", "local": "local"}
"""Correlation lookup (model / export metadata) -> correlation mode."""
MODE_LOOKUP = {"all-pairs": "grid_sample", "local": "local"}
"""The torch model's lookup for each mode."""
PRECISIONS = ("fp32", "mixed16")
PLAN_BACKENDS = ("torch", "onnxruntime", "tensorrt")

ALL_PAIRS_HEADROOM = 0.65
"""`--corr auto` keeps the all-pairs correlation only when its plan needs at most this share of the limit
(its volume is the part an estimate can miss most, and the rest of the machine keeps working)."""
FIT_SHARE = 0.9
"""A mode fits when its plan needs at most this share of the limit (the estimate is good to about 25%, and
what is left covers the estimate's error on the small parts)."""

FLOAT = 4
RUNTIME_BYTES = {"torch": 270 << 20, "onnxruntime": 150 << 20, "tensorrt": 600 << 20}
"""Resident memory of a backend before the first frame: interpreter, libraries, allocator pools (measured
once by scripts/calibrate_memory_plan.py)."""
ADDRESS_SPACE_EXTRA = {"torch": 1500 << 20, "onnxruntime": 700 << 20, "tensorrt": 3000 << 20}
"""Address space a backend reserves beyond its resident memory (shared libraries, thread stacks, allocator
arenas): subtracted from an address-space limit (RLIMIT_AS), which counts reservations, not resident pages."""
ENCODER_COPIES = {"torch": 5.5, "onnxruntime": 6.0, "tensorrt": 3.0}
"""Full-width activations of the 1/2-resolution encoder stage alive at once, fitted to the measured peaks of the
on-demand mode, where the encoders are the peak (docs/highres.json): torch frees each layer's input as it goes;
ONNX Runtime's arena and memory pattern keep most of the encoder graph's buffers. TensorRT's value is a guess until
the GPU acceptance script measures it."""
IMAGE_BYTES_PER_PIXEL = 60
"""Per pixel of one frame pair: the decoded uint8 images, their float32 padded copies and the model's inputs."""
UPSAMPLE_FLOATS_PER_PIXEL = 30
"""Per output pixel: the upsampled flow, the unfolded 3x3 neighbourhoods (2x9) and the softmaxed mask (9)."""
LOCAL_CHUNK_BYTES = 256 << 20
"""Largest window-sample tensor the on-demand correlation builds at once (it chunks above this)."""
CORR_TRANSIENT = {"onnxruntime": 3.0, "tensorrt": 3.0}
"""An export's all-pairs pyramid while it is built, in units of its packed rows: the volume and its pooled
levels, the padded levels and their concatenation are alive at once (and ONNX Runtime's arena rounds up)."""


@dataclass(frozen=True)
class ModelDims:
    """The widths that set a model's memory (from a checkpoint's tensors or an export's metadata)."""

    variant: str = "B"
    feature_dim: int = 256
    hidden_dim: int = 128
    context_dim: int = 256
    encoder_dims: tuple[int, int, int] = (64, 96, 128)
    corr_levels: int = 4
    corr_radius: int = 4
    parameters: int = 0
    solver: str = "anderson"
    solver_history: int = 6

    @property
    def window(self) -> int:
        return (2 * self.corr_radius + 1) ** 2


@dataclass(frozen=True)
class PlanRequest:
    """One run to plan: model, padded frame size, batch, correlation mode, precision, backend; `lookup` is the
    all-pairs lookup (an export's 'gather' packs zero-padded levels)."""

    dims: ModelDims
    height: int
    width: int
    batch: int = 1
    corr: str = "all-pairs"
    precision: str = "fp32"
    backend: str = "torch"
    lookup: str = "grid_sample"

    def __post_init__(self) -> None:
        if self.corr not in CORR_MODES:
            raise InputError(f"correlation mode must be one of {', '.join(CORR_MODES)}, got {self.corr!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.backend not in PLAN_BACKENDS:
            raise InputError(f"backend must be one of {', '.join(PLAN_BACKENDS)}, got {self.backend!r}")
        if self.height < 8 or self.width < 8 or self.batch < 1:
            raise InputError(f"cannot plan a {self.height}x{self.width} frame, batch {self.batch}")

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}" + (f" x{self.batch}" if self.batch > 1 else "")


@dataclass(frozen=True)
class MemoryLimit:
    """Bytes a run may use, and where the number comes from."""

    bytes: int
    source: str


@dataclass
class MemoryPlan:
    """Estimated peak bytes of one run, by part, and the limit it was checked against."""

    request: PlanRequest
    parts: dict[str, int] = field(default_factory=dict)
    limit: MemoryLimit | None = None
    total: int = 0
    """The peak: the largest phase, less than the sum of the parts (they are not all alive at once)."""

    @property
    def fits(self) -> bool:
        return self.limit is None or self.total <= FIT_SHARE * self.limit.bytes

    @property
    def comfortable(self) -> bool:
        return self.limit is None or self.total <= ALL_PAIRS_HEADROOM * self.limit.bytes

    def to_dict(self) -> dict:
        r = self.request
        return {"size": [r.height, r.width], "batch": r.batch, "corr": r.corr, "precision": r.precision,
                "backend": r.backend, "parts": dict(self.parts), "total": self.total,
                "limit": None if self.limit is None else asdict(self.limit), "fits": self.fits}


def human(n: float) -> str:
    """Bytes for people: 1.5 GB, 820 MB (powers of 1024, as --memory-limit reads them)."""
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


# --- the estimate ----------------------------------------------------------------------------------------------


def level_sizes(h8: int, w8: int, levels: int) -> list[tuple[int, int]]:
    """(h, w) of each pyramid level: avg_pool2d(2) floors level by level."""
    sizes = [(h8, w8)]
    for _ in range(levels - 1):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


def correlation_bytes(r: PlanRequest) -> tuple[int, int]:
    """(while built, while used). All-pairs: the pyramid over every pixel of the 1/8 grid (zero-padded levels
    for the export's gather lookup); torch builds level 0 twice over (the product, then its scaled copy), an
    export's encoder graph holds the volume, its padded levels and their packed rows at once
    (CORR_TRANSIENT). Local: the pooled second feature maps and the bounded window-sample chunk; both grow
    with the pixel count."""
    d, h8, w8 = r.dims, r.height // 8, r.width // 8
    pixels = r.batch * h8 * w8
    sizes = level_sizes(h8, w8, d.corr_levels)
    if r.corr == "local":
        pooled = sum(h * w for h, w in sizes) * r.batch * d.feature_dim * FLOAT
        samples = pixels * d.corr_levels * d.window * d.feature_dim * FLOAT
        used = int(pooled + min(samples, LOCAL_CHUNK_BYTES))
        return used, used
    pad = 2 * d.corr_radius + 2 if r.lookup == "gather" and r.backend != "torch" else 0
    pyramid = pixels * sum((h + 2 * pad) * (w + 2 * pad) for h, w in sizes) * FLOAT
    if r.backend == "torch":
        return int(max(2 * pixels * h8 * w8 * FLOAT, pyramid)), int(pyramid)
    return int(pyramid * CORR_TRANSIENT[r.backend]), int(pyramid)


def encoder_bytes(r: PlanRequest) -> int:
    """The encoders' 1/2-resolution activations (feature encoder on both frames); halved under mixed16."""
    act = 2 * (r.batch * r.height * r.width / 4) * r.dims.encoder_dims[0] * FLOAT * ENCODER_COPIES[r.backend]
    return int(act / 2 if r.precision == "mixed16" else act)


def feature_bytes(r: PlanRequest) -> int:
    """What the encoders leave for the solve: both feature maps and the context on the 1/8 grid."""
    d = r.dims
    return int(r.batch * (r.height // 8) * (r.width // 8) * (2 * d.feature_dim + 2 * d.context_dim) * FLOAT)


def solver_bytes(r: PlanRequest) -> int:
    """The fixed point (hidden state and flow on the 1/8 grid) times the states the solver keeps: Anderson its
    history of m iterates and residuals, the others the iterate, its image and the best one."""
    d = r.dims
    state = r.batch * (r.height // 8) * (r.width // 8) * (d.hidden_dim + 2) * FLOAT
    kept = 2 * d.solver_history + 3 if d.solver == "anderson" else 3
    return int(state * kept)


def workspace_bytes(r: PlanRequest) -> int:
    """The larger of one update step's activations (looked-up correlation features, motion encoder, GRU,
    heads) and the upsampling to full resolution (flow, unfolded neighbourhoods, mask)."""
    d = r.dims
    grid = r.batch * (r.height // 8) * (r.width // 8)
    step = grid * (2 * d.corr_levels * d.window + 12 * d.hidden_dim + 256 + 576) * FLOAT
    return int(max(step, r.batch * r.height * r.width * UPSAMPLE_FLOATS_PER_PIXEL * FLOAT))


def estimate(request: PlanRequest, limit: MemoryLimit | None = None) -> MemoryPlan:
    """The plan of `request` (checked against `limit` when given). The peak is the largest of three phases
    (encoding; building the correlation; solving and decoding), each on top of the runtime and the frames."""
    built, used = correlation_bytes(request)
    features, solver, work = feature_bytes(request), solver_bytes(request), workspace_bytes(request)
    encoder = encoder_bytes(request)
    base = RUNTIME_BYTES[request.backend] + request.dims.parameters * FLOAT
    images = request.batch * request.height * request.width * IMAGE_BYTES_PER_PIXEL
    peak = base + images + max(encoder + features, built + features, used + features + solver + work)
    parts = {"runtime": base, "images": images, "encoder": encoder, "correlation": built, "features": features,
             "solver_state": solver, "workspace": work}
    return MemoryPlan(request, parts, limit, peak)


# --- the limit -------------------------------------------------------------------------------------------------

UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
         "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_memory(text: str) -> int:
    """'8G', '512M', '1.5GB', '1073741824' -> bytes (powers of 1024); InputError otherwise."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if not m or unit not in UNITS:
        raise InputError(f"memory size {text!r} is not understood; write e.g. 8G, 512M or a number of bytes")
    value = int(float(m.group(1)) * UNITS[unit])
    if value <= 0:
        raise InputError(f"memory size must be > 0, got {text!r}")
    return value


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """cgroup v2 (memory.max - memory.current) or v1 (limit - usage) of this process's group, if limited."""
    pairs = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
             ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    for limit_file, usage_file in pairs:
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max" or int(raw) >= 1 << 60:
                return None
            return max(0, int(raw) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def _address_space_available(backend: str) -> int | None:
    """RLIMIT_AS less what this process has mapped and what the backend will reserve beyond resident memory."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return max(0, soft - used - ADDRESS_SPACE_EXTRA.get(backend, 0))


def available_memory(backend: str = "torch", override: int | str | None = None) -> MemoryLimit:
    """The memory a run may use: `override` (--memory-limit) when given, else the smallest of the machine's
    available memory (MemAvailable), this process's address-space limit and its cgroup's limit."""
    if override is not None:
        return MemoryLimit(parse_memory(override) if isinstance(override, str) else int(override), "--memory-limit")
    found = [(v, source) for v, source in ((_meminfo_available(), "available memory (MemAvailable)"),
                                            (_address_space_available(backend), "address-space limit (ulimit -v)"),
                                            (_cgroup_available(), "cgroup memory limit"))
             if v is not None]
    if not found:
        return MemoryLimit(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory")
    value, source = min(found)
    return MemoryLimit(int(value), source)


# --- the decision ----------------------------------------------------------------------------------------------


def _needs(plan: MemoryPlan) -> str:
    return f"{plan.request.corr} needs about {human(plan.total)} (correlation {human(plan.parts['correlation'])})"


def _limit_text(limit: MemoryLimit) -> str:
    return f"the limit is {human(limit.bytes)} ({limit.source}; a plan may use {FIT_SHARE:.0%} of it)"


def choose_plan(request: PlanRequest, limit: MemoryLimit, corr: str = "auto", fixed: str | None = None,
                hint: str = "") -> MemoryPlan:
    """The plan a run follows: `corr` 'auto' takes all-pairs when it fits comfortably (ALL_PAIRS_HEADROOM),
    else local when it fits; a named mode must fit. `fixed`: the mode a model file was exported with (it
    cannot change). MemoryPlanError (one line: size, estimate, limit, what to do) when nothing fits.
    `hint` is appended to the advice (e.g. the verb's option for a smaller frame)."""
    if corr not in CORR_CHOICES:
        raise InputError(f"--corr must be one of {', '.join(CORR_CHOICES)}, got {corr!r}")
    plans = {mode: estimate(replace(request, corr=mode), limit) for mode in CORR_MODES}
    smaller = f"a smaller frame{hint}, a smaller --batch, or more memory (--memory-limit)"
    if fixed is not None:
        plan = plans[fixed]
        if plan.fits:
            return plan
        advice = (f"re-export it with `deqflow export --lookup local` (local needs about "
                  f"{human(plans['local'].total)} here), or use {smaller}" if fixed == "all-pairs"
                  else f"use {smaller}")
        raise MemoryPlanError(f"frame {request.size}: this model file's {_needs(plan)} but {_limit_text(limit)}; "
                              f"{advice}")
    if corr != "auto":
        plan, other = plans[corr], plans["local" if corr == "all-pairs" else "all-pairs"]
        if plan.fits:
            return plan
        alt = f"--corr {other.request.corr} (about {human(other.total)}) or " if other.fits else ""
        raise MemoryPlanError(f"frame {request.size}: {_needs(plan)} but {_limit_text(limit)}; use {alt}{smaller}")
    if plans["all-pairs"].comfortable:
        return plans["all-pairs"]
    if plans["local"].fits:
        return plans["local"]
    raise MemoryPlanError(f"frame {request.size} fits in no correlation mode: {_needs(plans['all-pairs'])}, "
                          f"{_needs(plans['local'])}, but {_limit_text(limit)}; use {smaller}")


def auto_mode(request: PlanRequest, limit: MemoryLimit) -> str | None:
    """The mode `--corr auto` picks for `request` (None: it would refuse)."""
    try:
        return choose_plan(request, limit).request.corr
    except MemoryPlanError:
        return None


def largest_fitting(request: PlanRequest, limit: MemoryLimit, mode: str) -> tuple[int, int] | None:
    """The largest frame of `request`'s aspect ratio (sides multiples of 8) whose `mode` plan fits `limit`
    (all-pairs as auto keeps it: within ALL_PAIRS_HEADROOM); None when not even the smallest does."""
    aspect = request.width / request.height

    def size(h: int) -> tuple[int, int]:
        return h, max(8, int(round(h * aspect / 8)) * 8)

    def ok(h: int) -> bool:
        plan = estimate(replace(request, corr=mode, height=size(h)[0], width=size(h)[1]), limit)
        return plan.comfortable if mode == "all-pairs" else plan.fits

    lo, hi = 8, 8
    if not ok(lo):
        return None
    while ok(hi * 2) and hi < 1 << 17:
        hi *= 2
    hi *= 2
    while hi - lo > 8:  # ok(lo), not ok(hi), both multiples of 8
        mid = (lo + hi) // 16 * 8
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return size(lo)


# --- model dimensions ------------------------------------------------------------------------------------------

VARIANT_WIDTHS = {"T": (32, 64), "B": (128, 256), "L": (192, 256), "H": (256, 256), "G": (384, 256)}
"""Official variant -> (hidden = context width, feature width), for export metadata, which records the variant."""


def dims_from_checkpoint(path: str | os.PathLike) -> ModelDims:
    """A checkpoint's widths from its tensor shapes and stored config, without torch or its weights."""
    from deqflow.checkpoint_shapes import model_config_of, read_structure, state_dict_shapes
    from deqflow.errors import CheckpointError

    obj = read_structure(path)
    shapes, config = state_dict_shapes(obj), model_config_of(obj)
    try:
        context, feature = shapes["cnet.conv2.weight"][0], shapes["fnet.conv2.weight"][0]
    except KeyError as exc:
        raise CheckpointError(f"{path} is not a DEQ-Flow checkpoint: key {exc} is missing") from None
    variant = next((v for v, (hid, feat) in VARIANT_WIDTHS.items() if hid == context and feat == feature), "?")
    encoder = tuple(shapes.get(f"fnet.{k}.weight", (d,))[0]
                    for k, d in (("conv1", 64), ("layer2.0.conv1", 96), ("layer3.0.conv1", 128)))
    deq = config.get("deq") or {}
    solver = str(deq.get("f_solver", "anderson"))
    count = 0
    for shape in shapes.values():
        n = 1
        for s in shape:
            n *= s
        count += n
    return ModelDims(variant=variant, feature_dim=feature, hidden_dim=context, context_dim=context,
                     encoder_dims=encoder, corr_levels=int(config.get("corr_levels", 4)),
                     corr_radius=int(config.get("corr_radius", 4)), parameters=count, solver=solver,
                     solver_history=int(deq.get("anderson_m", 6)))


def dims_from_metadata(meta, parameters: int = 0) -> ModelDims:
    """An export's widths from its deqflow metadata (deqflow.model_metadata.ModelMetadata). Encoder widths
    are not recorded: the official ones are assumed (an overestimate for narrower encoders)."""
    hidden, feature = VARIANT_WIDTHS.get(meta.variant, (meta.hidden_dim or 128, 256))
    return ModelDims(variant=meta.variant, feature_dim=feature, hidden_dim=meta.hidden_dim or hidden,
                     context_dim=meta.hidden_dim or hidden, corr_levels=meta.corr_levels,
                     corr_radius=meta.corr_radius, parameters=parameters, solver=meta.solver,
                     solver_history=6)


ALLOCATION_FAILURES = ("can't allocate memory", "failed to allocate memory", "out of memory", "bad_alloc",
                       "cannot allocate memory")
"""How torch (DefaultCPUAllocator, CUDA), ONNX Runtime (BFCArena) and TensorRT word a failed allocation."""


def allocation_failure(exc: BaseException) -> str | None:
    """One line for an allocation that failed although the plan let the run start (None: not one): the
    requested bytes when the library says them, and what to do."""
    if not isinstance(exc, MemoryError):
        text = str(exc).lower()
        if not any(words in text for words in ALLOCATION_FAILURES):
            return None
    found = re.search(r"(?:allocate|size of|of size)\D{0,20}?([0-9]{4,})", str(exc))
    asked = f" (it asked for {human(int(found.group(1)))})" if found else ""
    return (f"out of memory{asked}: the run needed more memory than was free; use a smaller frame or batch, "
            "--corr local, or set --memory-limit to what this machine can really give so the plan refuses "
            "such a size up front")
