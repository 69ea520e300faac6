"""Reading a dataset's pictures: the one image loader of training, evaluation and the tools."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from llmi3d_core.data.format import ImageRecord
from llmi3d_core.errors import DataFormatError


def load_rgb(path: str | Path, record: ImageRecord | None = None) -> np.ndarray:
    """Read a picture as (H, W, 3) uint8 RGB, checking its size against `record` when given.

    Raises:
        DataFormatError: a missing or unreadable file, or a picture whose size is not the
            record's (images.jsonl and the PNG disagree).
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    which = f" (image {record.image_id})" if record is not None else ""
    if bgr is None:
        raise DataFormatError(f"{path}: missing or not a readable image{which}")
    if record is not None and bgr.shape[:2] != (record.height, record.width):
        raise DataFormatError(
            f"{path}: picture is {bgr.shape[1]}x{bgr.shape[0]} but images.jsonl says "
            f"{record.width}x{record.height}{which}"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])
