"""`deqflow` sub-commands backed by the PyTorch model (torch is imported inside `run`)."""
