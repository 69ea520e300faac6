"""One camera image -> the model's two inputs, the same way in training and at inference.

    canvas = letterbox (aspect kept) into high_res.image_size      -> image_hr (3, H_c, W_c)
    image_lr = the canvas resized to low_res.image_size squared    -> image_lr (3, S, S)

The square LR input is a fixed resize of the canvas (uniform when the canvas is square, as in
the presets), so every LR token covers the same part of every canvas. K is replaced by the
canvas intrinsics; llmi3d_core/letterbox.py maps pixels both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from llmi3d_core.letterbox import Letterbox
from llmi3d_core.model.config import ModelConfig


@dataclass
class ModelInputs:
    """The prepared inputs of one image.

    Attributes:
        image_hr: (3, H_c, W_c) float32 in [0, 1], the letterboxed canvas.
        image_lr: (3, S, S) float32 in [0, 1].
        K: (3, 3) float64 intrinsics of the canvas.
        letterbox: the placement of the image in the canvas.
    """

    image_hr: torch.Tensor
    image_lr: torch.Tensor
    K: np.ndarray
    letterbox: Letterbox


def to_chw(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


def prepare_inputs(rgb: np.ndarray, K: np.ndarray, config: ModelConfig) -> ModelInputs:
    """Letterbox an (H, W, 3) uint8 RGB image with intrinsics K for `config`'s input sizes."""
    canvas_h, canvas_w = config.high_res.image_size
    side = config.low_res.image_size
    letterbox = Letterbox.fit(rgb.shape[1], rgb.shape[0], canvas_w, canvas_h)
    canvas = letterbox.apply(rgb)
    small = cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA)
    return ModelInputs(
        image_hr=to_chw(canvas),
        image_lr=to_chw(small),
        K=letterbox.intrinsics(K),
        letterbox=letterbox,
    )


__all__ = ["ModelInputs", "prepare_inputs", "to_chw"]
