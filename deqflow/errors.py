"""Error types. Every bad input a user can give ends in one of these, with a message that says what
was wrong and what to do; the CLI prints the message instead of a traceback."""


class DeqflowError(Exception):
    """Base class of every error deqflow raises on purpose."""


class InputError(DeqflowError, ValueError):
    """An argument or input array is unusable (wrong shape, size, dtype, NaN, mismatched pair)."""


class CheckpointError(DeqflowError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


class FileFormatError(DeqflowError):
    """A data file (.flo, KITTI PNG, PFM, image, ONNX, engine) is missing, truncated or malformed."""


class MissingDependencyError(DeqflowError, ImportError):
    """An optional library (tensorrt, pycuda, onnxruntime-gpu, tensorboard...) is needed but absent."""


class NonFiniteOutputError(DeqflowError):
    """A model produced NaN/Inf (flow, residual): the model file is damaged or the model diverged."""


class ProfileError(InputError):
    """An input shape lies outside what a model or TensorRT engine was built for (checked before running)."""


class EngineMismatchError(DeqflowError):
    """A TensorRT engine was built by another TensorRT version or for another GPU (or from another ONNX)."""


class MemoryPlanError(InputError):
    """A frame size whose estimated peak memory exceeds the memory available (refused before any work), or an
    allocation that failed anyway."""
