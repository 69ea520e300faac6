"""Drawing 3D boxes on images: the node's debug image, eval galleries and contact sheets.

numpy + OpenCV only. Edges are clipped at a near plane before projection, so a box that reaches
behind the camera is still drawn correctly instead of as lines thrown across the image.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

# The 12 edges of a box as corner-index pairs, for corners in `geometry.box3d_corners` order.
BOX3D_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0),  # face z = -W/2
    (4, 5), (5, 6), (6, 7), (7, 4),  # face z = +W/2
    (0, 4), (1, 5), (2, 6), (3, 7),  # edges along W
)  # fmt: skip

NEAR_PLANE_M = 0.05
# a label's rectangle (x1, y1, x2, y2) in pixels
Rect = tuple[int, int, int, int]
# OpenCV font, scale and weight of the labels
_LABEL_FONT = (cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)


def label_color(label: str) -> tuple[float, float, float]:
    """A stable, saturated RGB colour in [0, 1] for a label (same label, same colour, any run)."""
    digest = hashlib.md5(label.strip().lower().encode("utf-8"), usedforsecurity=False).digest()
    hue = digest[0] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return (r, g, b)


def label_color_u8(label: str) -> tuple[int, int, int]:
    """`label_color` as 0..255 integers, for OpenCV drawing on RGB images."""
    r, g, b = label_color(label)
    return (round(r * 255), round(g * 255), round(b * 255))


def _clip_segment(
    p: npt.NDArray[np.float64], q: npt.NDArray[np.float64], near: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Clip the 3D segment p-q to z >= near; None when it lies entirely in front of the plane."""
    if p[2] < near and q[2] < near:
        return None
    if p[2] < near or q[2] < near:
        t = (near - p[2]) / (q[2] - p[2])
        cut = p + t * (q - p)
        p, q = (cut, q) if p[2] < near else (p, cut)
    return p, q


def draw_box3d(
    image_rgb: npt.NDArray[np.uint8],
    corners: npt.ArrayLike,
    K: npt.ArrayLike,
    color: tuple[int, int, int],
    label: str | None = None,
    *,
    thickness: int = 2,
    label_at: Literal["top", "bottom"] = "top",
    taken: list[Rect] | None = None,
) -> npt.NDArray[np.uint8]:
    """Draw one box's wireframe (and an optional label) onto `image_rgb` in place.

    Args:
        image_rgb: HxWx3 uint8 image, modified in place and returned.
        corners: (8, 3) corners in metres, camera optical frame, `box3d_corners` order.
        K: (3, 3) intrinsics of this image.
        color: RGB 0..255.
        label: text drawn above the box's highest visible corner ("top") or below its lowest
            ("bottom").
        thickness: line width in pixels.
        label_at: where the label goes.
        taken: label rectangles already on the image; the label moves away from the box until
            it covers none of them, and its own rectangle is added. A right answer's box and the
            truth's coincide, so their labels would otherwise cover each other.

    Returns:
        The same image array.
    """
    pts = np.asarray(corners, dtype=np.float64).reshape(8, 3)
    Km = np.asarray(K, dtype=np.float64).reshape(3, 3)
    drawn: list[npt.NDArray[np.float64]] = []
    for i, j in BOX3D_EDGES:
        segment = _clip_segment(pts[i], pts[j], NEAR_PLANE_M)
        if segment is None:
            continue
        uv = (Km @ np.stack(segment).T).T  # (2, 3)
        uv = uv[:, :2] / uv[:, 2:3]
        if not np.all(np.isfinite(uv)) or np.abs(uv).max() > 1e5:
            continue
        a, b = (tuple(int(round(c)) for c in point) for point in uv)
        cv2.line(image_rgb, a, b, color, thickness, cv2.LINE_AA)
        drawn.append(uv)
    if label and drawn:
        uv_all = np.concatenate(drawn)
        h, w = image_rgb.shape[:2]
        size = label_size(label)
        _, height, base = size
        if label_at == "top":
            anchor = uv_all[np.argmin(uv_all[:, 1])]
            y = anchor[1] - 6
        else:
            anchor = uv_all[np.argmax(uv_all[:, 1])]
            y = anchor[1] + 6 + height
        x = int(np.clip(anchor[0], 0, max(w - 10, 0)))
        step = -(height + base) if label_at == "top" else height + base
        origin = free_label_origin((x, int(y)), size, taken or [], step, h)
        rect = draw_label(image_rgb, label, origin, color)
        if taken is not None:
            taken.append(rect)
    return image_rgb


def label_size(text: str) -> tuple[int, int, int]:
    """(width, height above the baseline, depth below it) of a label in pixels (`draw_label`)."""
    (text_w, text_h), base = cv2.getTextSize(text, *_LABEL_FONT)
    return text_w + 4, text_h + base, base


def free_label_origin(
    origin: tuple[int, int],
    size: tuple[int, int, int],
    taken: Sequence[Rect],
    step: int,
    image_h: int,
) -> tuple[int, int]:
    """Where a label of `size` (`label_size`) at baseline `origin` covers no rectangle of `taken`.

    From `origin` held inside the image, the label moves `step` px at a time (negative: up),
    then the other way, as long as it stays inside; when no place is free, `origin` held inside.
    """
    x, (width, height, base) = origin[0], size
    low, high = height, max(image_h - base - 1, height)  # baselines that keep it in the image
    start = int(np.clip(origin[1], low, high))
    for direction in (step, -step) if step else ():
        y = start
        while low <= y <= high:
            rect = (x, y - height, x + width, y + base)
            if not any(_overlap(rect, other) for other in taken):
                return x, y
            y += direction
    return x, start


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_label(
    image_rgb: npt.NDArray[np.uint8],
    text: str,
    origin: tuple[int, int],
    color: tuple[int, int, int],
) -> Rect:
    """Draw `text` on a filled background of `color` with its baseline at `origin`, in place.

    Returns the rectangle (x1, y1, x2, y2) px it covers.
    """
    width, height, base = label_size(text)
    x, y = origin
    rect = (x, y - height, x + width, y + base)
    cv2.rectangle(image_rgb, rect[:2], rect[2:], color, cv2.FILLED)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    font, scale, weight = _LABEL_FONT
    cv2.putText(image_rgb, text, (x + 2, y), font, scale, ink, weight, cv2.LINE_AA)
    return rect


def draw_boxes(
    image_rgb: npt.NDArray[np.uint8],
    boxes: Sequence[tuple[npt.ArrayLike, str]],
    K: npt.ArrayLike,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> npt.NDArray[np.uint8]:
    """Return a copy of `image_rgb` with each (corners, label) box drawn, coloured by label.

    A label that would cover an earlier one moves up, away from its box (`draw_box3d`).
    """
    canvas = np.ascontiguousarray(image_rgb, dtype=np.uint8).copy()
    taken: list[Rect] = []
    for index, (corners, label) in enumerate(boxes):
        color = colors[index] if colors is not None else label_color_u8(label.rsplit(" ", 1)[0])
        draw_box3d(canvas, corners, K, color, label, taken=taken)
    return canvas
