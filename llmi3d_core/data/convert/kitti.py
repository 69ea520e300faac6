"""KITTI object labels and calibration: reading label_2 and calib files, and KITTI's box convention.

A KITTI label ("type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry [score]") places the
BOTTOM centre (x, y, z) of the box in the rectified reference camera (cam 0) frame, y pointing
down; the pictures are camera 2's, whose projection P2 = K [I | t] carries an offset
t = K^-1 P2[:, 3]. `kitti_to_camera` turns a label into our camera-2 box (see mono3drefer.py,
the converter that uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmi3d_core.errors import DataFormatError


@dataclass(frozen=True)
class KittiObject:
    """One KITTI object label (rectified camera-0 frame: x right, y down, z forward).

    Attributes:
        type: KITTI class ("Car", "Pedestrian", "Cyclist", ..., "DontCare").
        truncated: 0..1, fraction of the object leaving the image.
        occluded: 0 fully visible, 1 partly occluded, 2 largely occluded, 3 unknown.
        alpha: observation angle, radians.
        bbox: (4,) [x1, y1, x2, y2] 2D box, px.
        h: height, metres.
        w: width, metres.
        l: length, metres.
        location: (3,) BOTTOM centre of the box, metres.
        ry: rotation about the camera y axis, radians.
        score: detection score (results files only), else None.
    """

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: np.ndarray
    h: float
    w: float
    l: float  # noqa: E741 (KITTI's name)
    location: np.ndarray
    ry: float
    score: float | None = None

    def same_box(self, other: KittiObject, tol: float = 1e-3) -> bool:
        """True when both labels describe the same object (type and every number within tol)."""
        mine = np.concatenate([self.bbox, [self.h, self.w, self.l, self.ry], self.location])
        theirs = np.concatenate([other.bbox, [other.h, other.w, other.l, other.ry], other.location])
        return self.type.lower() == other.type.lower() and bool(
            np.all(np.abs(mine - theirs) <= tol)
        )


def parse_kitti_label(tokens: str | list[Any], where: str) -> KittiObject:
    """Parse one KITTI label: a line "Car 0.00 0 -1.58 ..." or the list of its tokens.

    Raises:
        DataFormatError: naming `where` when there are not 15 or 16 fields or one is no number.
    """
    fields = tokens.split() if isinstance(tokens, str) else [str(t) for t in tokens]
    if len(fields) not in (15, 16):
        raise DataFormatError(
            f"{where}: expected a KITTI label of 15 fields (type truncated occluded alpha "
            f"x1 y1 x2 y2 h w l x y z ry) or 16 with a score, got {len(fields)}: {fields}"
        )
    try:
        numbers = [float(f) for f in fields[1:]]
    except ValueError:
        raise DataFormatError(
            f"{where}: KITTI label fields 2-{len(fields)} must be numbers, got {fields[1:]}"
        ) from None
    if not np.all(np.isfinite(numbers)):
        raise DataFormatError(f"{where}: KITTI label has non-finite numbers: {fields}")
    return KittiObject(
        type=fields[0],
        truncated=numbers[0],
        occluded=int(numbers[1]),
        alpha=numbers[2],
        bbox=np.array(numbers[3:7]),
        h=numbers[7],
        w=numbers[8],
        l=numbers[9],
        location=np.array(numbers[10:13]),
        ry=numbers[13],
        score=numbers[14] if len(numbers) == 15 else None,
    )


def load_kitti_labels(path: str | Path) -> list[KittiObject]:
    """Read a KITTI label_2 file (one label a line, blank lines ignored).

    Raises:
        DataFormatError: naming the file and line of a malformed label, or a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    labels = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            labels.append(parse_kitti_label(line, f"{path}: line {number}"))
    return labels


def load_kitti_calib(path: str | Path) -> np.ndarray:
    """Read P2 (3, 4) from a KITTI calib file ("P2: 12 numbers", other keys ignored).

    Raises:
        DataFormatError: naming the file (and line) when P2 is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: calibration file not found")
    keys = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        keys.append(key.strip())
        if key.strip() != "P2":
            continue
        try:
            values = [float(v) for v in rest.split()]
        except ValueError:
            values = []
        if len(values) != 12 or not np.all(np.isfinite(values)):
            raise DataFormatError(
                f"{path}: line {number}: P2 must be 12 numbers (3x4 row-major), got {rest.split()}"
            )
        P2 = np.array(values).reshape(3, 4)
        if P2[0, 0] <= 0 or P2[1, 1] <= 0 or P2[1, 0] != 0 or P2[2, :3].tolist() != [0, 0, 1]:
            raise DataFormatError(
                f"{path}: line {number}: P2 must be [[fx, s, cx, tx], [0, fy, cy, ty], "
                f"[0, 0, 1, tz]] with fx, fy > 0, got {P2.tolist()}"
            )
        return P2
    raise DataFormatError(f"{path}: no 'P2:' line (keys present: {', '.join(keys) or 'none'})")


def rotation_y(ry: float) -> np.ndarray:
    """(3, 3) rotation by ry radians about the camera y axis (KITTI's rotation_y)."""
    c, s = np.cos(ry), np.sin(ry)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def kitti_to_camera(
    label: KittiObject, P2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KITTI label -> (center_cam (3,), dimensions [W, H, L] (3,), R_cam (3, 3)) in camera 2.

    center_cam = (x, y - h/2, z) + K^-1 P2[:, 3]: KITTI's location is the bottom centre in the
    rectified camera-0 frame, and P2's fourth column is camera 2's offset from it.
    """
    K = P2[:, :3]
    offset = np.linalg.solve(K, P2[:, 3])  # (3,) camera-2 offset, metres
    center = label.location + np.array([0.0, -label.h / 2.0, 0.0]) + offset
    return center, np.array([label.w, label.h, label.l]), rotation_y(label.ry)
