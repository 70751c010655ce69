"""Classical CPU optical flow from OpenCV, the yardsticks for the shipped model: Farneback and DIS."""

from __future__ import annotations

import cv2
import numpy as np

from deqflow.errors import InputError

METHODS = ("zero", "farneback", "dis_medium", "dis_fast", "dis_ultrafast")


def opencv_flow(method: str, image1: np.ndarray, image2: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB pair -> (H,W,2) float32 flow with the named classical method."""
    if method not in METHODS:
        raise InputError(f"unknown baseline {method!r}; choose one of {METHODS}")
    if method == "zero":
        return np.zeros((*image1.shape[:2], 2), np.float32)
    g1 = cv2.cvtColor(image1, cv2.COLOR_RGB2GRAY)
    g2 = cv2.cvtColor(image2, cv2.COLOR_RGB2GRAY)
    if method == "farneback":
        # OpenCV's documented example parameters
        return cv2.calcOpticalFlowFarneback(g1, g2, None, 0.5, 3, 15, 3, 5, 1.2, 0).astype(np.float32)
    preset = {"dis_medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, "dis_fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
              "dis_ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST}[method]
    return cv2.DISOpticalFlow_create(preset).calc(g1, g2, None).astype(np.float32)
