"""Labels on drawn boxes: where they go, and that they never cover each other."""

from __future__ import annotations

import numpy as np

from llmi3d_core.geometry import box3d_corners
from llmi3d_core.visualize import Rect, draw_box3d, free_label_origin, label_size

K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
CORNERS = box3d_corners(np.array([0.0, 0.0, 6.0]), np.array([1.0, 1.0, 1.0]), np.eye(3))


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _projected_v(corners: np.ndarray) -> np.ndarray:
    uvw = (K @ corners.T).T
    return uvw[:, 1] / uvw[:, 2]


def test_a_label_on_the_same_box_moves_off_the_first() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    taken: list[Rect] = []
    for label in ("chair 0.91", "ground truth", "table 0.40"):
        draw_box3d(image, CORNERS, K, (0, 200, 0), label, taken=taken)
    assert len(taken) == 3
    for i, a in enumerate(taken):
        assert a[1] >= 0 and a[3] <= 480, a
        for b in taken[i + 1 :]:
            assert not _overlap(a, b), (a, b)
    # each moved up, away from its box: the first sits just above it
    assert taken[0][3] <= _projected_v(CORNERS).min()
    assert taken[2][1] < taken[1][1] < taken[0][1]


def test_a_label_below_its_box() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    taken: list[Rect] = []
    draw_box3d(image, CORNERS, K, (255, 255, 255), "ground truth", label_at="bottom", taken=taken)
    (rect,) = taken
    assert rect[1] >= _projected_v(CORNERS).max()
    assert image[rect[1] + 1, rect[0] + 1].tolist() == [255, 255, 255]  # its filled background


def test_free_label_origin_turns_at_the_image_edge() -> None:
    size = label_size("chair 0.91")
    height, base = size[1], size[2]
    # the label's own spot, at the top of the image: taken, nothing above, so it goes down
    taken: list[Rect] = [(0, 0, 200, height + base)]
    x, y = free_label_origin((10, 5), size, taken, -(height + base), 480)
    assert x == 10
    assert y - height >= taken[0][3]
    # free: it stays (held inside the image)
    assert free_label_origin((10, 100), size, [], -(height + base), 480) == (10, 100)
    assert free_label_origin((10, 2), size, [], -(height + base), 480) == (10, height)
    # nowhere free: the origin held inside the image
    everything: list[Rect] = [(0, 0, 640, 480)]
    assert free_label_origin((10, 100), size, everything, -(height + base), 480) == (10, 100)
