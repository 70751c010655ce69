"""`deqflow` sub-commands backed by the PyTorch model: their parsers build without torch, which each `run`
imports."""
