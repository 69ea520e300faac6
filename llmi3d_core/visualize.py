"""Drawing 3D boxes on images: the node's debug image, eval galleries and contact sheets.

numpy + OpenCV only. Edges are clipped at a near plane before projection, so a box that reaches
behind the camera is still drawn correctly instead of as lines thrown across the image.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Sequence

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
) -> npt.NDArray[np.uint8]:
    """Draw one box's wireframe (and an optional label) onto `image_rgb` in place.

    Args:
        image_rgb: HxWx3 uint8 image, modified in place and returned.
        corners: (8, 3) corners in metres, camera optical frame, `box3d_corners` order.
        K: (3, 3) intrinsics of this image.
        color: RGB 0..255.
        label: text drawn above the box's highest visible corner.
        thickness: line width in pixels.

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
        top = uv_all[np.argmin(uv_all[:, 1])]
        h, w = image_rgb.shape[:2]
        x = int(np.clip(top[0], 0, max(w - 10, 0)))
        y = int(np.clip(top[1] - 6, 14, max(h - 2, 14)))
        draw_label(image_rgb, label, (x, y), color)
    return image_rgb


def draw_label(
    image_rgb: npt.NDArray[np.uint8],
    text: str,
    origin: tuple[int, int],
    color: tuple[int, int, int],
) -> None:
    """Draw `text` on a filled background of `color` with its baseline at `origin`, in place."""
    font, scale, weight = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    (tw, th), base = cv2.getTextSize(text, font, scale, weight)
    x, y = origin
    cv2.rectangle(image_rgb, (x, y - th - base), (x + tw + 4, y + base), color, cv2.FILLED)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(image_rgb, text, (x + 2, y), font, scale, ink, weight, cv2.LINE_AA)


def draw_boxes(
    image_rgb: npt.NDArray[np.uint8],
    boxes: Sequence[tuple[npt.ArrayLike, str]],
    K: npt.ArrayLike,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> npt.NDArray[np.uint8]:
    """Return a copy of `image_rgb` with each (corners, label) box drawn, coloured by label."""
    canvas = np.ascontiguousarray(image_rgb, dtype=np.uint8).copy()
    for index, (corners, label) in enumerate(boxes):
        color = colors[index] if colors is not None else label_color_u8(label.rsplit(" ", 1)[0])
        draw_box3d(canvas, corners, K, color, label)
    return canvas
