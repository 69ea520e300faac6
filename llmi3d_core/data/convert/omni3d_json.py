"""Reading and validating Omni3D's JSON files, the input of the Omni3D converter (omni3d.py).

`load_omni3d` turns one file (its layout is in omni3d.py's docstring, the converter's --help)
into plain dataclasses, checking every field's type and shape so that a malformed value is
reported with its file and JSON path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmi3d_core.data.convert.common import (
    expect_array,
    expect_bool,
    expect_float,
    expect_int,
    expect_key,
    expect_str,
    expected_error,
    load_json,
)
from llmi3d_core.errors import DataFormatError


def optional_box(value: Any, where: str) -> np.ndarray | None:
    """Parse an Omni3D [x1, y1, x2, y2] box; None where it is -1 (unavailable) or degenerate."""
    if value is None or (not isinstance(value, list) and value == -1):
        return None
    box = expect_array(value, (4,), where)
    if np.all(box == -1) or box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


def optional_number(value: Any, where: str) -> float | None:
    """Parse an Omni3D optional number; None where it is -1 (unavailable) or absent."""
    if value is None:
        return None
    number = expect_float(value, where)
    return None if number == -1 else number


@dataclass(frozen=True)
class Omni3DImage:
    """One entry of Omni3D's "images" list.

    Attributes:
        id: Omni3D image id (unique within the JSON).
        width: Image width in pixels.
        height: Image height in pixels.
        file_path: Path of the image relative to the images root (e.g. "SUNRGBD/kv1/.../0001.jpg").
        K: (3, 3) pinhole intrinsics in pixels.
        dataset_id: Omni3D's source dataset id, or None where absent.
        src_90_rotate: How many times the source image was rotated 90 deg counter-clockwise.
        src_flagged: Omni3D's flag for a possibly inconsistent sky direction.
    """

    id: int
    width: int
    height: int
    file_path: str
    K: np.ndarray
    dataset_id: int | None = None
    src_90_rotate: int = 0
    src_flagged: bool = False


@dataclass(frozen=True)
class Omni3DAnnotation:
    """One valid-3D entry of Omni3D's "annotations" list (camera frame: +x right, +y down, +z fwd).

    Attributes:
        id: Annotation id.
        image_id: Id of its image.
        category_id: Omni3D category id.
        category_name: Plain category name ("chair").
        center_cam: (3,) box centre in metres.
        dimensions: (3,) [W, H, L] in metres (Omni3D order).
        R_cam: (3, 3) egocentric rotation, object to camera.
        bbox3D_cam: (8, 3) corners in metres, Omni3D corner order.
        bbox2D_tight: (4,) annotated tight xyxy box in px, or None where unavailable.
        bbox2D_proj: (4,) projected 3D box (not clipped) xyxy px, or None.
        bbox2D_trunc: (4,) projected 3D box clipped to the image xyxy px, or None.
        behind_camera: True when a corner lies behind the camera; None where unknown.
        visibility: Annotated visibility 0..1, None where unknown.
        truncation: Truncation 0..1, None where unknown.
        segmentation_pts: Visible segmentation points, None where unknown.
        lidar_pts: LiDAR points in the box, None where unknown.
        depth_error: L1 of depth map and rendered object, None where unknown.
    """

    id: int
    image_id: int
    category_id: int
    category_name: str
    center_cam: np.ndarray
    dimensions: np.ndarray
    R_cam: np.ndarray
    bbox3D_cam: np.ndarray
    bbox2D_tight: np.ndarray | None = None
    bbox2D_proj: np.ndarray | None = None
    bbox2D_trunc: np.ndarray | None = None
    behind_camera: bool | None = None
    visibility: float | None = None
    truncation: float | None = None
    segmentation_pts: int | None = None
    lidar_pts: int | None = None
    depth_error: float | None = None


@dataclass(frozen=True)
class Omni3DFile:
    """A parsed Omni3D JSON.

    Attributes:
        path: The file it came from.
        info: The "info" dict as stored.
        images: Images by id, in file order.
        categories: Category names by id.
        annotations: The annotations with valid3D true, in file order.
        num_invalid3d: How many annotations were dropped because valid3D was false.
    """

    path: Path
    info: dict[str, Any]
    images: dict[int, Omni3DImage]
    categories: dict[int, str]
    annotations: list[Omni3DAnnotation]
    num_invalid3d: int = 0


def _parse_image(entry: Any, where: str) -> Omni3DImage:
    width = expect_int(expect_key(entry, "width", where), f"{where}.width")
    height = expect_int(expect_key(entry, "height", where), f"{where}.height")
    if width <= 0 or height <= 0:
        raise expected_error(f"{where}.width/height", "positive sizes", [width, height])
    K = expect_array(expect_key(entry, "K", where), (3, 3), f"{where}.K")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise expected_error(f"{where}.K", "positive focal lengths K[0][0], K[1][1]", K.tolist())
    dataset_id = entry.get("dataset_id")
    return Omni3DImage(
        id=expect_int(expect_key(entry, "id", where), f"{where}.id"),
        width=width,
        height=height,
        file_path=expect_str(expect_key(entry, "file_path", where), f"{where}.file_path"),
        K=K,
        dataset_id=None if dataset_id is None else expect_int(dataset_id, f"{where}.dataset_id"),
        src_90_rotate=expect_int(entry.get("src_90_rotate", 0), f"{where}.src_90_rotate"),
        src_flagged=expect_bool(entry.get("src_flagged", False), f"{where}.src_flagged"),
    )


def _parse_annotation(entry: Any, where: str, categories: dict[int, str]) -> Omni3DAnnotation:
    category_id = expect_int(expect_key(entry, "category_id", where), f"{where}.category_id")
    if "category_name" in entry:
        category_name = expect_str(entry["category_name"], f"{where}.category_name")
    elif category_id in categories:
        category_name = categories[category_id]
    else:
        raise expected_error(f"{where}.category_id", "an id listed in 'categories'", category_id)
    dimensions = expect_array(expect_key(entry, "dimensions", where), (3,), f"{where}.dimensions")
    if np.any(dimensions <= 0):
        raise expected_error(
            f"{where}.dimensions", "3 positive numbers [W, H, L] in metres", entry["dimensions"]
        )
    R_cam = nearest_rotation(
        expect_array(expect_key(entry, "R_cam", where), (3, 3), f"{where}.R_cam"), f"{where}.R_cam"
    )
    behind = entry.get("behind_camera")
    seg = optional_number(entry.get("segmentation_pts"), f"{where}.segmentation_pts")
    lidar = optional_number(entry.get("lidar_pts"), f"{where}.lidar_pts")
    return Omni3DAnnotation(
        id=expect_int(expect_key(entry, "id", where), f"{where}.id"),
        image_id=expect_int(expect_key(entry, "image_id", where), f"{where}.image_id"),
        category_id=category_id,
        category_name=category_name,
        center_cam=expect_array(
            expect_key(entry, "center_cam", where), (3,), f"{where}.center_cam"
        ),
        dimensions=dimensions,
        R_cam=R_cam,
        bbox3D_cam=expect_array(
            expect_key(entry, "bbox3D_cam", where), (8, 3), f"{where}.bbox3D_cam"
        ),
        bbox2D_tight=optional_box(entry.get("bbox2D_tight"), f"{where}.bbox2D_tight"),
        bbox2D_proj=optional_box(entry.get("bbox2D_proj"), f"{where}.bbox2D_proj"),
        bbox2D_trunc=optional_box(entry.get("bbox2D_trunc"), f"{where}.bbox2D_trunc"),
        behind_camera=None
        if behind is None or behind == -1
        else expect_bool(behind, f"{where}.behind_camera"),
        visibility=optional_number(entry.get("visibility"), f"{where}.visibility"),
        truncation=optional_number(entry.get("truncation"), f"{where}.truncation"),
        segmentation_pts=None if seg is None else int(seg),
        lidar_pts=None if lidar is None else int(lidar),
        depth_error=optional_number(entry.get("depth_error"), f"{where}.depth_error"),
    )


# Rotations in the JSON files are float32-rounded; beyond this they are not rotations at all.
_ROTATION_TOL = 1e-2


def nearest_rotation(R: np.ndarray, where: str) -> np.ndarray:
    """Return the rotation nearest to R (SVD), which must already be one up to rounding.

    Raises:
        DataFormatError: naming `where` when R is no rotation (off by more than 1e-2, or a
            reflection).
    """
    if np.abs(R @ R.T - np.eye(3)).max() > _ROTATION_TOL or np.linalg.det(R) <= 0:
        raise expected_error(where, "a 3x3 rotation matrix (orthonormal, det +1)", R.tolist())
    u, _, vt = np.linalg.svd(R)
    return np.asarray(u @ vt)


def load_omni3d(path: str | Path) -> Omni3DFile:
    """Parse and validate one Omni3D JSON file.

    Annotations with valid3D false carry no usable 3D box and are dropped (counted in
    `num_invalid3d`); every other field is checked for type and shape.

    Args:
        path: The JSON file, e.g. datasets/Omni3D/SUNRGBD_val.json.

    Returns:
        The parsed file.

    Raises:
        DataFormatError: naming the file and the JSON index (e.g. "annotations[4].R_cam") of the
            first malformed value, what was expected and what was found.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise expected_error(
            str(path), "a JSON object with info/images/categories/annotations", data
        )
    info = data.get("info", {})
    if not isinstance(info, dict):
        raise expected_error(f"{path}: info", "a JSON object", info)

    categories: dict[int, str] = {}
    raw_categories = expect_key(data, "categories", str(path))
    if not isinstance(raw_categories, list):
        raise expected_error(f"{path}: categories", "a list", raw_categories)
    for index, entry in enumerate(raw_categories):
        where = f"{path}: categories[{index}]"
        cid = expect_int(expect_key(entry, "id", where), f"{where}.id")
        categories[cid] = expect_str(expect_key(entry, "name", where), f"{where}.name")

    images: dict[int, Omni3DImage] = {}
    raw_images = expect_key(data, "images", str(path))
    if not isinstance(raw_images, list):
        raise expected_error(f"{path}: images", "a list", raw_images)
    for index, entry in enumerate(raw_images):
        image = _parse_image(entry, f"{path}: images[{index}]")
        if image.id in images:
            raise DataFormatError(f"{path}: images[{index}].id: duplicate image id {image.id}")
        images[image.id] = image

    annotations: list[Omni3DAnnotation] = []
    num_invalid = 0
    raw_annotations = expect_key(data, "annotations", str(path))
    if not isinstance(raw_annotations, list):
        raise expected_error(f"{path}: annotations", "a list", raw_annotations)
    for index, entry in enumerate(raw_annotations):
        where = f"{path}: annotations[{index}]"
        if not expect_bool(expect_key(entry, "valid3D", where), f"{where}.valid3D"):
            num_invalid += 1
            continue
        annotation = _parse_annotation(entry, where, categories)
        if annotation.image_id not in images:
            raise expected_error(
                f"{where}.image_id", "the id of an entry in 'images'", annotation.image_id
            )
        annotations.append(annotation)
    return Omni3DFile(path, info, images, categories, annotations, num_invalid)
