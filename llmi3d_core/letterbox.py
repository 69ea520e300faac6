"""Letterboxing: fit an image into the model's fixed canvas without changing its aspect ratio.

The model sees every camera through one canvas of W_c x H_c pixels. The image is scaled by
(s_x, s_y) = (new_w / w, new_h / h), with new_w / new_h as close to w / h as whole pixels allow,
and pasted centred; the rest of the canvas is grey. Every pixel quantity crosses the canvas
boundary through this one transform: intrinsics K, projected centres, keypoints, 2D boxes, box
and point prompts. Metric 3D quantities do not change, and the virtual depth is taken with the
canvas focal length and width, so that the same apparent size means the same virtual depth.

Pixel convention (docs/dataset_format.md): pixel (c, r) is centred at (c, r), so an image spans
[-0.5, w - 0.5]. A scale maps the continuous coordinate x + 0.5 to s (x + 0.5), i.e.

    u_canvas = s_x (u + 0.5) - 0.5 + pad_x          (OpenCV's resize uses the same mapping)

    canvas K = [[s_x f_x, s_x s, s_x (c_x + 0.5) - 0.5 + pad_x],
                [0,       s_y f_y, s_y (c_y + 0.5) - 0.5 + pad_y],
                [0,       0,       1]]
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from llmi3d_core.errors import InvalidInputError

PAD_VALUE = 128  # grey: the mean of [0, 255], what the (x - 0.5) / 0.5 normalisation maps to 0


@dataclass(frozen=True)
class Letterbox:
    """The placement of one image of (image_w, image_h) px in a (canvas_w, canvas_h) canvas.

    Attributes:
        image_w, image_h: size of the original image, px.
        canvas_w, canvas_h: size of the canvas, px.
        new_w, new_h: size of the scaled image inside the canvas, px.
        pad_x, pad_y: offset of its top-left corner in the canvas, px.
    """

    image_w: int
    image_h: int
    canvas_w: int
    canvas_h: int
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int

    @classmethod
    def fit(cls, image_w: int, image_h: int, canvas_w: int, canvas_h: int) -> Letterbox:
        """The largest aspect-preserving placement of the image, centred in the canvas.

        Raises:
            InvalidInputError: for a size below 1 px.
        """
        if min(image_w, image_h, canvas_w, canvas_h) < 1:
            raise InvalidInputError(
                f"letterbox needs sizes >= 1 px, got image {image_w}x{image_h} and canvas "
                f"{canvas_w}x{canvas_h}"
            )
        scale = min(canvas_w / image_w, canvas_h / image_h)
        new_w = min(canvas_w, max(1, round(image_w * scale)))
        new_h = min(canvas_h, max(1, round(image_h * scale)))
        return cls(
            image_w=int(image_w),
            image_h=int(image_h),
            canvas_w=int(canvas_w),
            canvas_h=int(canvas_h),
            new_w=new_w,
            new_h=new_h,
            pad_x=(canvas_w - new_w) // 2,
            pad_y=(canvas_h - new_h) // 2,
        )

    @property
    def scale(self) -> np.ndarray:
        """(2,) s_x, s_y."""
        return np.array([self.new_w / self.image_w, self.new_h / self.image_h])

    @property
    def offset(self) -> np.ndarray:
        """(2,) the translation of `to_canvas` after the scale: s (0.5) - 0.5 + pad."""
        return 0.5 * self.scale - 0.5 + np.array([self.pad_x, self.pad_y], dtype=np.float64)

    @property
    def canvas_size(self) -> np.ndarray:
        """(2,) canvas (W_c, H_c) as float."""
        return np.array([self.canvas_w, self.canvas_h], dtype=np.float64)

    def as_array(self) -> np.ndarray:
        """(4,) s_x, s_y, offset_x, offset_y: what `points_to_image` needs, for batching."""
        return np.concatenate([self.scale, self.offset])

    # ------------------------------------------------------------------ pixel quantities

    def points_to_canvas(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) image px -> canvas px."""
        canvas: np.ndarray = np.asarray(points, dtype=np.float64) * self.scale + self.offset
        return canvas

    def points_to_image(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) canvas px -> image px (the inverse of `points_to_canvas`)."""
        image: np.ndarray = (np.asarray(points, dtype=np.float64) - self.offset) / self.scale
        return image

    def boxes_to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """(..., 4) x1, y1, x2, y2 image px -> canvas px."""
        boxes = np.asarray(boxes, dtype=np.float64)
        return np.concatenate(
            [self.points_to_canvas(boxes[..., :2]), self.points_to_canvas(boxes[..., 2:])], -1
        )

    def boxes_to_image(self, boxes: np.ndarray, *, clip: bool = False) -> np.ndarray:
        """(..., 4) canvas px -> image px.

        `clip`: limit the box to the image, [-0.5, w - 0.5] x [-0.5, h - 0.5]. A box of an
        object's visible pixels (what the model's 2D boxes and the data's `bbox2D_tight` are)
        cannot leave the image, but a box regressed from a cell near the border of the image
        often does: clipped, it is the truncated object's box (as torchvision's detectors clip
        theirs). Measured on the default model's test split: single-target grounding 70.9 ->
        71.3 %, captions 60.2 -> 60.9 %.
        """
        boxes = np.asarray(boxes, dtype=np.float64)
        image = np.concatenate(
            [self.points_to_image(boxes[..., :2]), self.points_to_image(boxes[..., 2:])], -1
        )
        if clip:
            high = np.array([self.image_w, self.image_h, self.image_w, self.image_h]) - 0.5
            image = np.clip(image, -0.5, high)
        return image

    def rows_to_canvas(self, rows: np.ndarray) -> np.ndarray:
        """(...) image rows v -> canvas rows."""
        canvas: np.ndarray = np.asarray(rows, dtype=np.float64) * self.scale[1] + self.offset[1]
        return canvas

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """(3, 3) K of the image -> K of the canvas (see the module docstring)."""
        K = np.asarray(K, dtype=np.float64)
        out = K.copy()
        out[0, :] = K[0, :] * self.scale[0]
        out[1, :] = K[1, :] * self.scale[1]
        out[0, 2] += self.offset[0]
        out[1, 2] += self.offset[1]
        return out

    # ------------------------------------------------------------------ pictures

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(image_h, image_w, 3) uint8 -> (canvas_h, canvas_w, 3) uint8, grey around it.

        Raises:
            InvalidInputError: when the picture's size is not this letterbox's image size.
        """
        if rgb.shape[:2] != (self.image_h, self.image_w):
            raise InvalidInputError(
                f"letterbox for a {self.image_w}x{self.image_h} image got a picture of "
                f"{rgb.shape[1]}x{rgb.shape[0]}"
            )
        canvas = np.full((self.canvas_h, self.canvas_w, 3), PAD_VALUE, dtype=np.uint8)
        if (self.new_w, self.new_h) == (self.image_w, self.image_h):
            resized = rgb
        else:
            resized = cv2.resize(rgb, (self.new_w, self.new_h), interpolation=cv2.INTER_AREA)
        canvas[self.pad_y : self.pad_y + self.new_h, self.pad_x : self.pad_x + self.new_w] = resized
        return canvas


__all__ = ["PAD_VALUE", "Letterbox"]
