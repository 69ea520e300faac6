r"""Convert Omni3D JSON (SUN RGB-D, KITTI, nuScenes, Objectron, ARKitScenes, Hypersim) to ours.

    llmi3d data omni3d --json datasets/Omni3D/SUNRGBD_val.json --images-root datasets \\
        --out data/sunrgbd_val [--captions captions.json]

Omni3D (Brazil et al., CVPR 2023, https://github.com/facebookresearch/omni3d, DATA.md) stores one
COCO-like JSON per source dataset and split:

    {"info": {"id", "source", "name", "split", "version", "url"},
     "images": [{"id", "dataset_id", "width", "height", "file_path", "K" (3x3),
                 "src_90_rotate", "src_flagged"}],
     "categories": [{"id", "name", "supercategory"}],
     "annotations": [{"id", "image_id", "category_id", "category_name", "valid3D",
                      "bbox2D_tight", "bbox2D_proj", "bbox2D_trunc" ([x1, y1, x2, y2] px, -1 = n/a),
                      "bbox3D_cam" (8x3 m), "center_cam" (3, m), "dimensions" ([W, H, L] m),
                      "R_cam" (3x3), "behind_camera", "visibility", "truncation",
                      "segmentation_pts", "lidar_pts", "depth_error" (-1 = n/a)}]}

Its camera frame (+x right, +y down, +z forward), its box centre, its [W, H, L] order and its
corner order are ours, so the 3D fields are copied. What changes:

- our "bbox2D_proj" is the projected box clipped to the image, which Omni3D calls "bbox2D_trunc";
- our "bbox2D_tight" is Omni3D's tight box, or the clipped projected box where that is -1;
- "center_2D" is computed by projecting center_cam with K;
- "truncation" of -1 (unknown) becomes the fraction of the projected box's area outside the image;
  "visibility" of -1 becomes 1 - truncation (no occluders known); annotated values are kept;
- "scene" is "indoor" (SUN RGB-D, ARKitScenes, Hypersim), "street" (KITTI, nuScenes) or the
  source folder name (Objectron); "camera_group" is the source folder (first part of file_path).

Queries come from templates ("the chair", "the nearest chair", ...; see `template_caption`) or from
a caption file (IG3D-style, the format is documented in `load_captions`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmi3d_core.data.format import (
    IMAGE_SUFFIXES,
    SPLITS,
    DatasetInfo,
    ImageRecord,
    ObjectRecord,
    QueryRecord,
)
from llmi3d_core.data.writer import DatasetWriter, image_file_name
from llmi3d_core.errors import DataFormatError, InvalidInputError

# ---------------------------------------------------------------------------------------------
# Small JSON validators shared by the real-format converters (omni3d, mono3drefer, bag labels).
# `where` names the file and the JSON path (or line), so a message reads
# "a.json: annotations[3].dimensions: expected 3 positive numbers, got [1, -2]".
# ---------------------------------------------------------------------------------------------


def _fail(where: str, expected: str, value: Any) -> DataFormatError:
    shown = repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return DataFormatError(f"{where}: expected {expected}, got {shown}")


def expect_key(obj: Any, key: str, where: str) -> Any:
    """Return obj[key], raising DataFormatError (naming `where`) if obj is no dict or lacks it."""
    if not isinstance(obj, dict):
        raise _fail(where, "a JSON object", obj)
    if key not in obj:
        keys = ", ".join(sorted(str(k) for k in obj)) or "none"
        raise DataFormatError(f"{where}: missing key {key!r} (keys present: {keys})")
    return obj[key]


def expect_int(value: Any, where: str) -> int:
    """Return value as int; bools and non-integral numbers are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise _fail(where, "an integer", value)
    return int(value)


def expect_float(value: Any, where: str) -> float:
    """Return value as a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, "a finite number", value)
    return float(value)


def expect_str(value: Any, where: str) -> str:
    """Return value if it is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, "a non-empty string", value)
    return value


def expect_bool(value: Any, where: str) -> bool:
    """Return value as bool; accepts true/false and the integers 0/1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise _fail(where, "true/false", value)


def expect_array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Return value as a finite float64 array of exactly `shape` (nested JSON lists)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(where, f"numbers of shape {list(shape)}", value) from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise _fail(where, f"finite numbers of shape {list(shape)}", value)
    return array


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


def load_json(path: Path) -> Any:
    """Read a JSON file, turning syntax errors into DataFormatError with the line and column.

    Raises:
        DataFormatError: when the file is missing or not valid JSON.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(
            f"{path}: line {err.lineno} column {err.colno}: invalid JSON ({err.msg})"
        ) from None


# ---------------------------------------------------------------------------------------------
# Parsing: Omni3D JSON -> plain dataclasses
# ---------------------------------------------------------------------------------------------


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
        raise _fail(f"{where}.width/height", "positive sizes", [width, height])
    K = expect_array(expect_key(entry, "K", where), (3, 3), f"{where}.K")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise _fail(f"{where}.K", "positive focal lengths K[0][0], K[1][1]", K.tolist())
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
        raise _fail(f"{where}.category_id", "an id listed in 'categories'", category_id)
    dimensions = expect_array(expect_key(entry, "dimensions", where), (3,), f"{where}.dimensions")
    if np.any(dimensions <= 0):
        raise _fail(
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
        raise _fail(where, "a 3x3 rotation matrix (orthonormal, det +1)", R.tolist())
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
        raise _fail(str(path), "a JSON object with info/images/categories/annotations", data)
    info = data.get("info", {})
    if not isinstance(info, dict):
        raise _fail(f"{path}: info", "a JSON object", info)

    categories: dict[int, str] = {}
    raw_categories = expect_key(data, "categories", str(path))
    if not isinstance(raw_categories, list):
        raise _fail(f"{path}: categories", "a list", raw_categories)
    for index, entry in enumerate(raw_categories):
        where = f"{path}: categories[{index}]"
        cid = expect_int(expect_key(entry, "id", where), f"{where}.id")
        categories[cid] = expect_str(expect_key(entry, "name", where), f"{where}.name")

    images: dict[int, Omni3DImage] = {}
    raw_images = expect_key(data, "images", str(path))
    if not isinstance(raw_images, list):
        raise _fail(f"{path}: images", "a list", raw_images)
    for index, entry in enumerate(raw_images):
        image = _parse_image(entry, f"{path}: images[{index}]")
        if image.id in images:
            raise DataFormatError(f"{path}: images[{index}].id: duplicate image id {image.id}")
        images[image.id] = image

    annotations: list[Omni3DAnnotation] = []
    num_invalid = 0
    raw_annotations = expect_key(data, "annotations", str(path))
    if not isinstance(raw_annotations, list):
        raise _fail(f"{path}: annotations", "a list", raw_annotations)
    for index, entry in enumerate(raw_annotations):
        where = f"{path}: annotations[{index}]"
        if not expect_bool(expect_key(entry, "valid3D", where), f"{where}.valid3D"):
            num_invalid += 1
            continue
        annotation = _parse_annotation(entry, where, categories)
        if annotation.image_id not in images:
            raise _fail(f"{where}.image_id", "the id of an entry in 'images'", annotation.image_id)
        annotations.append(annotation)
    return Omni3DFile(path, info, images, categories, annotations, num_invalid)


@dataclass(frozen=True)
class CaptionEntry:
    """One query of a caption file (see `load_captions`).

    Attributes:
        image_id: Omni3D image id.
        ann_id: Omni3D annotation id of the referred object.
        text: The caption or question.
        type: "caption" or "question".
        answer: The object phrase to answer with; None means the category name.
        split: "train", "val" or "test" to override the JSON's split; None keeps it.
        where: file and line (or list index) it came from, for error messages.
    """

    image_id: int
    ann_id: int
    text: str
    type: str = "caption"
    answer: str | None = None
    split: str | None = None
    where: str = ""


CAPTION_TYPES = ("caption", "question")


def load_captions(path: str | Path) -> list[CaptionEntry]:
    """Read an IG3D-style caption file: referring captions / questions for Omni3D objects.

    IG3D (the LLMI3D paper's dataset built on Omni3D) has no public file layout that we know
    of, so this is our own, kept minimal. Either a JSON list or JSON Lines (one object a line):

        {"image_id": 12, "ann_id": 345, "text": "the lamp on the desk"}
        {"image_id": 12, "ann_id": 345, "type": "question",
         "text": "It is too dark to read: what should I use?", "answer": "lamp"}

    Keys: "image_id" and "ann_id" (Omni3D ids; "annotation_id" is accepted for "ann_id"),
    "text" ("caption" and "question" are accepted for it), optional "type" ("caption" default,
    or "question"), optional "answer" (the object phrase; default the category name) and optional
    "split" ("train"/"val"/"test", default the Omni3D JSON's split).

    Raises:
        DataFormatError: naming the file and the line (JSONL) or list index (JSON).
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    entries: list[tuple[str, Any]] = []
    if raw.lstrip().startswith("["):
        data = load_json(path)
        entries = [(f"{path}: [{i}]", e) for i, e in enumerate(data)]
    else:
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"{path}: line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}: line {number}: invalid JSON ({err.msg})") from None
    return [_parse_caption(entry, where) for where, entry in entries]


def _parse_caption(entry: Any, where: str) -> CaptionEntry:
    if not isinstance(entry, dict):
        raise _fail(where, "a JSON object with image_id, ann_id and text", entry)
    ann_key = "ann_id" if "ann_id" in entry else "annotation_id"
    text_key = next((k for k in ("text", "caption", "question") if k in entry), "text")
    kind = entry.get("type", "question" if text_key == "question" else "caption")
    if kind not in CAPTION_TYPES:
        raise _fail(f"{where}.type", f"one of {list(CAPTION_TYPES)}", kind)
    split = entry.get("split")
    if split is not None and split not in SPLITS:
        raise _fail(f"{where}.split", f"one of {list(SPLITS)}", split)
    answer = entry.get("answer")
    return CaptionEntry(
        image_id=expect_int(expect_key(entry, "image_id", where), f"{where}.image_id"),
        ann_id=expect_int(expect_key(entry, ann_key, where), f"{where}.{ann_key}"),
        text=expect_str(expect_key(entry, text_key, where), f"{where}.{text_key}").strip(),
        type=kind,
        answer=None if answer is None else expect_str(answer, f"{where}.answer"),
        split=split,
        where=where,
    )


# ---------------------------------------------------------------------------------------------
# Box helpers shared by the real-format converters (numpy, camera optical frame, metres, px)
# ---------------------------------------------------------------------------------------------

# Corners closer than this to the camera plane make the projected 2D box meaningless.
MIN_CORNER_DEPTH_M = 0.05


def box_corners(center: np.ndarray, dims_whl: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Return the 8 corners (Omni3D order) of a box given in Omni3D's [W, H, L] order.

    A thin adapter over `geometry.box3d_corners`, which takes (L, W, H).

    Args:
        center: (3,) box centre, camera frame, metres.
        dims_whl: (3,) [W, H, L] metres.
        R: (3, 3) object-to-camera rotation.

    Returns:
        (8, 3) corners in the camera frame, metres.
    """
    from llmi3d_core.geometry import box3d_corners  # lazy: geometry imports torch

    w, h, length = (float(d) for d in dims_whl)
    return np.asarray(box3d_corners(np.asarray(center, float), np.array([length, w, h]), R))


def project_points(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection (..., 3) camera-frame points (z > 0) -> (..., 2) pixels."""
    from llmi3d_core.geometry import project  # lazy: geometry imports torch

    return np.asarray(project(np.asarray(points, dtype=np.float64), np.asarray(K, float)))


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip an [x1, y1, x2, y2] px box to the image [0, width] x [0, height]."""
    return np.array(
        [
            np.clip(box[0], 0, width),
            np.clip(box[1], 0, height),
            np.clip(box[2], 0, width),
            np.clip(box[3], 0, height),
        ],
        dtype=np.float64,
    )


def box_area(box: np.ndarray) -> float:
    """Area of an [x1, y1, x2, y2] box in px^2 (0 for an empty box)."""
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


@dataclass(frozen=True)
class ProjectedBox:
    """What the converters derive from a 3D box and K (all px of the image).

    Attributes:
        corners: (8, 3) corners, camera frame, metres, Omni3D order.
        center_2D: (2,) projection of the box centre.
        bbox2D_full: (4,) extent of the projected corners (not clipped).
        bbox2D_clipped: (4,) bbox2D_full clipped to the image.
        truncation: 1 - area(clipped) / area(full), 0..1.
    """

    corners: np.ndarray
    center_2D: np.ndarray
    bbox2D_full: np.ndarray
    bbox2D_clipped: np.ndarray
    truncation: float


def project_box(
    center: np.ndarray,
    dims_whl: np.ndarray,
    R: np.ndarray,
    K: np.ndarray,
    *,
    width: int,
    height: int,
    corners: np.ndarray | None = None,
) -> ProjectedBox | None:
    """Project a 3D box into the image; None when it cannot be seen.

    None when a corner is closer than MIN_CORNER_DEPTH_M to the camera plane (the projected
    extent is then unbounded; Omni3D flags such boxes "behind_camera") or when the clipped 2D
    box is empty (the box is outside the field of view).

    Args:
        center: (3,) box centre, camera frame, metres.
        dims_whl: (3,) [W, H, L] metres.
        R: (3, 3) object-to-camera rotation.
        K: (3, 3) intrinsics.
        width: image width, px.
        height: image height, px.
        corners: (8, 3) corners to use instead of computing them (e.g. Omni3D's bbox3D_cam).
    """
    corners = box_corners(center, dims_whl, R) if corners is None else np.asarray(corners)
    if float(corners[:, 2].min()) < MIN_CORNER_DEPTH_M:
        return None
    uv = project_points(corners, K)  # (8, 2)
    full = np.concatenate([uv.min(axis=0), uv.max(axis=0)])
    clipped = clip_box(full, width, height)
    if box_area(clipped) <= 0.0:
        return None
    truncation = 1.0 - box_area(clipped) / max(box_area(full), 1e-12)
    return ProjectedBox(
        corners=corners,
        center_2D=project_points(np.asarray(center, dtype=np.float64), K),
        bbox2D_full=full,
        bbox2D_clipped=clipped,
        truncation=float(np.clip(truncation, 0.0, 1.0)),
    )


# ---------------------------------------------------------------------------------------------
# Template captions (shared with the bag converter)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateConfig:
    """How `template_caption` tells apart objects that share a category.

    Attributes:
        depth_margin_m: the nearest/farthest object must beat every other one by this much.
        side_margin_frac: the leftmost/rightmost object must beat every other one by this
            fraction of the image width (compared on projected centres).
    """

    depth_margin_m: float = 0.5
    side_margin_frac: float = 0.05


def template_caption(
    categories: Sequence[str],
    centers: np.ndarray,
    centers_2d: np.ndarray,
    index: int,
    *,
    width: int,
    config: TemplateConfig = TemplateConfig(),
) -> str | None:
    """Return a caption that singles out object `index` among the image's objects, or None.

    "the {category}" when the category occurs once in the image. Otherwise the first of
    "the nearest/farthest {category}" (distance from the camera centre) and
    "the leftmost/rightmost {category}" (projected centre u) that holds with a margin over
    every other object of the category; None when no template is unambiguous.

    Args:
        categories: (N,) category phrase of every object in the image.
        centers: (N, 3) box centres, camera frame, metres.
        centers_2d: (N, 2) projected centres, px.
        index: the target object.
        width: image width, px.
        config: the margins.
    """
    name = categories[index]
    others = [i for i, c in enumerate(categories) if c == name and i != index]
    if not others:
        return f"the {name}"
    distance = np.linalg.norm(np.asarray(centers, dtype=np.float64), axis=1)
    u = np.asarray(centers_2d, dtype=np.float64)[:, 0]
    gap_m, gap_px = config.depth_margin_m, config.side_margin_frac * width
    if distance[index] + gap_m < distance[others].min():
        return f"the nearest {name}"
    if distance[index] - gap_m > distance[others].max():
        return f"the farthest {name}"
    if u[index] + gap_px < u[others].min():
        return f"the leftmost {name}"
    if u[index] - gap_px > u[others].max():
        return f"the rightmost {name}"
    return None


# ---------------------------------------------------------------------------------------------
# Conversion: Omni3D -> our dataset format
# ---------------------------------------------------------------------------------------------


@dataclass
class ConversionSummary:
    """What a converter wrote and what it left out (printed by the CLIs).

    Attributes:
        out_dir: the dataset directory written.
        images: images written.
        objects: objects written.
        queries: queries written, per split.
        skipped: reason -> count of items (images, objects or queries) left out.
        notes: remark -> count of items written but changed or worth a look.
    """

    out_dir: Path
    images: int = 0
    objects: int = 0
    queries: dict[str, int] | None = None
    skipped: dict[str, int] | None = None
    notes: dict[str, int] | None = None

    def skip(self, reason: str, count: int = 1) -> None:
        """Count `count` items left out for `reason` (nothing when count is 0)."""
        if count:
            self.skipped = self.skipped or {}
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    def note(self, remark: str, count: int = 1) -> None:
        """Count `count` items written with `remark`."""
        self.notes = self.notes or {}
        self.notes[remark] = self.notes.get(remark, 0) + count

    def add_query(self, split: str) -> None:
        """Count one written query of `split`."""
        self.queries = self.queries or {}
        self.queries[split] = self.queries.get(split, 0) + 1

    def __str__(self) -> str:
        queries = ", ".join(f"{k} {v}" for k, v in sorted((self.queries or {}).items())) or "none"
        text = f"{self.out_dir}: {self.images} images, {self.objects} objects, queries: {queries}"
        if self.skipped:
            text += "; left out: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
        if self.notes:
            text += "; notes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.notes.items()))
        return text


@dataclass(frozen=True)
class Omni3DConvertConfig:
    """Options of `convert_omni3d` (the CLI flags map one to one).

    Attributes:
        name: dataset name for dataset.json; "" means "omni3d_<first JSON stem>".
        split: "train"/"val"/"test" for every query; "" takes it from each JSON's info.split.
        min_visibility: objects annotated less visible are kept as objects but get no query.
        max_truncation: objects more truncated are kept as objects but get no query.
        skip_missing_images: leave out images whose file is missing instead of failing.
        templates: TemplateConfig of the template captions.
    """

    name: str = ""
    split: str = ""
    min_visibility: float = 0.0
    max_truncation: float = 1.0
    skip_missing_images: bool = False
    templates: TemplateConfig = TemplateConfig()

    def __post_init__(self) -> None:
        if self.split not in ("", *SPLITS):
            raise InvalidInputError(
                f"split must be one of {list(SPLITS)} or '', got {self.split!r}"
            )
        if not 0.0 <= self.min_visibility <= 1.0 or not 0.0 <= self.max_truncation <= 1.0:
            raise InvalidInputError(
                "min_visibility and max_truncation must be in [0, 1], got "
                f"{self.min_visibility} and {self.max_truncation}"
            )


# Omni3D source folder (lower case) -> our scene label.
SCENES = {
    "sunrgbd": "indoor",
    "arkitscenes": "indoor",
    "hypersim": "indoor",
    "kitti_object": "street",
    "kitti": "street",
    "nuscenes": "street",
}


def _source_name(image: Omni3DImage, info: dict[str, Any]) -> str:
    """The Omni3D source dataset of an image: the first folder of its file_path ("SUNRGBD")."""
    parts = Path(image.file_path).parts
    if len(parts) > 1:
        return parts[0]
    return str(info.get("name", "omni3d")).split()[0] or "omni3d"


def _json_split(omni: Omni3DFile, override: str) -> str:
    if override:
        return override
    split = str(omni.info.get("split", "")).strip().lower()
    aliases = {"training": "train", "validation": "val", "testing": "test"}
    split = aliases.get(split, split)
    if split not in SPLITS:
        raise DataFormatError(
            f"{omni.path}: info.split is {omni.info.get('split')!r}, not one of Train/Val/Test; "
            "give the split explicitly (--split train|val|test)"
        )
    return split


def read_image_file(path: Path, width: int, height: int, rotate_90: int = 0) -> tuple[bytes, Any]:
    """Read a picture and check its size; returns (file bytes, decoded RGB or None).

    The decoded image is returned (and the bytes are to be re-encoded) only when the file had to
    be turned: when its size is (width, height) swapped and `rotate_90` is odd, it is rotated
    `rotate_90` times by 90 degrees counter-clockwise (Omni3D's src_90_rotate).

    Raises:
        DataFormatError: when the file cannot be decoded or has another size.
    """
    data = path.read_bytes()
    decoded = decode_rgb(data, path)
    got = decoded.shape[:2]
    if got == (height, width):
        return data, None
    if rotate_90 % 2 == 1 and got == (width, height):
        return data, np.ascontiguousarray(np.rot90(decoded, k=rotate_90))
    raise DataFormatError(
        f"{path}: picture is {got[1]}x{got[0]} px but the annotation says {width}x{height}"
    )


def _object_record(
    ann: Omni3DAnnotation, image: Omni3DImage, object_id: str
) -> tuple[ObjectRecord | None, str]:
    """Build our ObjectRecord from an Omni3D annotation; (None, reason) when it is unusable."""
    if ann.behind_camera:
        return None, "objects behind the camera"
    corners, extra = ann.bbox3D_cam, {"source_ann_id": ann.id}
    gap = float(np.linalg.norm(corners.mean(axis=0) - ann.center_cam))
    if gap > 1e-3 * (1.0 + float(np.linalg.norm(ann.center_cam))):
        # corners that do not surround center_cam would be refused by the dataset reader
        corners = box_corners(ann.center_cam, ann.dimensions, ann.R_cam)
        extra["bbox3D_recomputed"] = True
    projected = project_box(
        ann.center_cam,
        ann.dimensions,
        ann.R_cam,
        image.K,
        width=image.width,
        height=image.height,
        corners=corners,
    )
    if projected is None:
        return None, "objects behind the camera or out of view"
    if ann.bbox2D_trunc is not None:
        clipped = clip_box(ann.bbox2D_trunc, image.width, image.height)
    else:
        clipped = projected.bbox2D_clipped
    tight = ann.bbox2D_tight if ann.bbox2D_tight is not None else clipped
    tight = clip_box(tight, image.width, image.height)
    truncation = projected.truncation if ann.truncation is None else ann.truncation
    record = ObjectRecord(
        object_id=object_id,
        category_name=ann.category_name.strip().lower().replace("_", " "),
        attributes={},
        center_cam=ann.center_cam,
        dimensions=ann.dimensions,
        R_cam=ann.R_cam,
        bbox2D_tight=tight,
        bbox2D_proj=clipped,
        bbox3D_cam=projected.corners,
        center_2D=projected.center_2D,
        visibility=float(
            np.clip(1.0 - truncation if ann.visibility is None else ann.visibility, 0, 1)
        ),
        truncation=float(np.clip(truncation, 0.0, 1.0)),
        extra=extra,
    )
    return record, ""


def convert_omni3d(
    json_paths: Sequence[str | Path],
    images_root: str | Path,
    out_dir: str | Path,
    *,
    captions: str | Path | None = None,
    config: Omni3DConvertConfig = Omni3DConvertConfig(),
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Convert one or more Omni3D JSON files (and their pictures) into one dataset directory.

    Every valid-3D annotation in front of the camera becomes an object. Queries: with
    `captions`, exactly the file's captions/questions; without, one template caption per object
    that passes the visibility/truncation limits and that a template can single out
    (`template_caption`). Pictures are copied byte for byte (re-encoded only when rotated).

    Args:
        json_paths: Omni3D JSON files, e.g. [".../SUNRGBD_val.json", ".../KITTI_val.json"].
        images_root: the folder each image's file_path is relative to (Omni3D's datasets/).
        out_dir: the dataset directory to write.
        captions: an IG3D-style caption file (see `load_captions`), or None for templates.
        config: conversion options.
        overwrite: allow replacing a dataset already in out_dir.
        progress: show a tqdm progress bar.

    Returns:
        What was written and left out.

    Raises:
        DataFormatError: for a malformed JSON or caption file, a missing or wrongly sized
            picture, or a caption pointing at an unknown image or annotation.
        InvalidInputError: when out_dir already holds a dataset and overwrite is False.
    """
    from tqdm import tqdm

    if not json_paths:
        raise InvalidInputError("convert_omni3d needs at least one Omni3D JSON file")
    files = [load_omni3d(p) for p in json_paths]
    caption_map: dict[tuple[int, int], list[CaptionEntry]] | None = None
    if captions is not None:
        caption_map = {}
        known = {(a.image_id, a.id) for f in files for a in f.annotations}
        for entry in load_captions(captions):
            if (entry.image_id, entry.ann_id) not in known:
                raise DataFormatError(
                    f"{entry.where}: image_id {entry.image_id} / ann_id {entry.ann_id} is not a "
                    f"valid-3D annotation of {', '.join(str(f.path) for f in files)}"
                )
            caption_map.setdefault((entry.image_id, entry.ann_id), []).append(entry)

    info = DatasetInfo(
        name=config.name or f"omni3d_{files[0].path.stem}".lower(),
        seed=None,
        generator={
            "program": "llmi3d data omni3d",
            "sources": [str(f.path) for f in files],
            "captions": None if captions is None else str(captions),
        },
    )
    summary = ConversionSummary(out_dir=Path(out_dir))
    with DatasetWriter(out_dir, info, overwrite=overwrite) as writer:
        job = _Omni3DJob(Path(images_root), caption_map, config, writer, summary)
        for omni in files:
            split = _json_split(omni, config.split)
            summary.skip("annotations with valid3D false", omni.num_invalid3d)
            anns_of: dict[int, list[Omni3DAnnotation]] = {}
            for ann in omni.annotations:
                anns_of.setdefault(ann.image_id, []).append(ann)
            desc = f"omni3d {omni.path.name}"
            for image in tqdm(omni.images.values(), desc=desc, disable=not progress, unit="img"):
                job.convert_image(omni, image, anns_of.get(image.id, []), split)
        if caption_map is not None:
            unused = [k for k in caption_map if k not in job.used_captions]
            if unused:
                summary.skip("captions of left-out images or objects", len(unused))
        writer.info.camera_groups = job.groups
    return summary


@dataclass
class _Omni3DJob:
    """State of one `convert_omni3d` run (the writer, the summary, the captions used)."""

    images_root: Path
    captions: dict[tuple[int, int], list[CaptionEntry]] | None
    config: Omni3DConvertConfig
    writer: DatasetWriter
    summary: ConversionSummary
    used_captions: set[tuple[int, int]] = field(default_factory=set)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def convert_image(
        self, omni: Omni3DFile, image: Omni3DImage, anns: list[Omni3DAnnotation], split: str
    ) -> None:
        """Write one Omni3D image, its objects and its queries (or count why it is left out)."""
        source = _source_name(image, omni.info)
        image_id = f"{omni.path.stem}_{image.id}"
        objects: list[ObjectRecord] = []
        kept: list[Omni3DAnnotation] = []
        for ann in anns:
            obj, reason = _object_record(ann, image, f"{image_id}_{ann.id}")
            if obj is None:
                self.summary.skip(reason)
                continue
            objects.append(obj)
            kept.append(ann)
        if not objects:
            self.summary.skip("images without usable objects")
            return
        path = self.images_root / image.file_path
        if not path.is_file():
            if self.config.skip_missing_images:
                self.summary.skip("images whose file is missing")
                return
            raise DataFormatError(
                f"{omni.path}: image id {image.id}: picture {path} not found (is --images-root "
                "the folder Omni3D's file_path values are relative to? --skip-missing-images "
                "leaves such images out)"
            )
        data, picture = read_image_file(path, image.width, image.height, image.src_90_rotate)
        suffix = path.suffix.lower()
        if picture is not None or suffix not in IMAGE_SUFFIXES:
            suffix = ".png"  # re-encoded: lossless
        record = ImageRecord(
            image_id=image_id,
            file_name=image_file_name(image_id, suffix),
            width=image.width,
            height=image.height,
            K=image.K,
            scene=SCENES.get(source.lower(), source.lower()),
            camera_group=source,
            objects=objects,
            extra={"source_image_id": image.id, "source_file_path": image.file_path},
        )
        if picture is not None:
            self.writer.add_image(record, picture)
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            self.writer.add_image(record, decode_rgb(data, path))
        else:
            self.writer.add_image(record, encoded=data)
        self.summary.images += 1
        self.summary.objects += len(objects)
        _update_group(self.groups, source, image)
        self._write_queries(
            image=image, image_id=image_id, objects=objects, anns=kept, split=split, source=source
        )

    def _write_queries(
        self,
        *,
        image: Omni3DImage,
        image_id: str,
        objects: list[ObjectRecord],
        anns: list[Omni3DAnnotation],
        split: str,
        source: str,
    ) -> None:
        """Queries of one image: the caption file's, or one template caption per object."""
        wanted: list[tuple[ObjectRecord, str, str, str, str]] = []  # obj, split, type, text, answer
        if self.captions is not None:
            for obj, ann in zip(objects, anns, strict=True):
                for entry in self.captions.get((image.id, ann.id), []):
                    self.used_captions.add((image.id, ann.id))
                    answer = entry.answer or obj.category_name
                    wanted.append((obj, entry.split or split, entry.type, entry.text, answer))
        else:
            categories = [o.category_name for o in objects]
            centers = np.stack([o.center_cam for o in objects])
            centers_2d = np.stack([o.center_2D for o in objects])
            for index, (obj, ann) in enumerate(zip(objects, anns, strict=True)):
                if ann.visibility is not None and ann.visibility < self.config.min_visibility:
                    self.summary.skip("template queries: object below min visibility")
                    continue
                if obj.truncation > self.config.max_truncation:
                    self.summary.skip("template queries: object above max truncation")
                    continue
                text = template_caption(
                    categories, centers, centers_2d, index,
                    width=image.width, config=self.config.templates,
                )  # fmt: skip
                if text is None:
                    self.summary.skip("template queries: no unambiguous template")
                    continue
                wanted.append((obj, split, "caption", text, obj.category_name))
        for number, (obj, query_split, kind, text, answer) in enumerate(wanted):
            self.writer.add_query(
                QueryRecord(
                    query_id=f"{image_id}_q{number:02d}",
                    image_id=image_id,
                    split=query_split,
                    type=kind,
                    text=text,
                    answer=answer,
                    target_object_id=obj.object_id,
                    camera_group=source,
                )
            )
            self.summary.add_query(query_split)


def decode_rgb(data: bytes, path: Path) -> np.ndarray:
    """Decode picture bytes to (H, W, 3) uint8 RGB.

    Raises:
        DataFormatError: naming `path` when OpenCV cannot decode the bytes.
    """
    import cv2

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise DataFormatError(f"{path}: OpenCV cannot decode this picture")
    return np.ascontiguousarray(decoded[:, :, ::-1])


def _update_group(groups: dict[str, dict[str, Any]], group: str, image: Omni3DImage) -> None:
    """Track per camera group the image size seen first and the range of fx."""
    fx = float(image.K[0, 0])
    entry = groups.setdefault(
        group, {"width": image.width, "height": image.height, "fx_range": [fx, fx]}
    )
    entry["fx_range"] = [min(entry["fx_range"][0], fx), max(entry["fx_range"][1], fx)]


# ---------------------------------------------------------------------------------------------
# CLI: llmi3d data omni3d
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `llmi3d data omni3d`."""
    defaults = Omni3DConvertConfig()
    parser.add_argument(
        "--json", required=True, nargs="+", type=Path, metavar="FILE",
        help="Omni3D JSON file(s), e.g. datasets/Omni3D/SUNRGBD_val.json",
    )  # fmt: skip
    parser.add_argument(
        "--images-root", required=True, type=Path, metavar="DIR",
        help="folder the images' file_path values are relative to (Omni3D's datasets/)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument(
        "--captions", type=Path, metavar="FILE", default=None,
        help="IG3D-style caption file (JSON list or JSONL of {image_id, ann_id, text, ...}); "
        "without it, template captions ('the chair', 'the nearest chair') are made",
    )  # fmt: skip
    parser.add_argument("--name", default=defaults.name, help="dataset name (dataset.json)")
    parser.add_argument(
        "--split", choices=SPLITS, default=None,
        help="split of every query (default: each JSON's info.split)",
    )  # fmt: skip
    parser.add_argument("--min-visibility", type=float, default=defaults.min_visibility)
    parser.add_argument("--max-truncation", type=float, default=defaults.max_truncation)
    parser.add_argument(
        "--skip-missing-images", action="store_true",
        help="leave out images whose file is missing instead of failing",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d data omni3d`; print the summary and return 0."""
    config = Omni3DConvertConfig(
        name=args.name,
        split=args.split or "",
        min_visibility=args.min_visibility,
        max_truncation=args.max_truncation,
        skip_missing_images=args.skip_missing_images,
    )
    summary = convert_omni3d(
        args.json,
        args.images_root,
        args.out,
        captions=args.captions,
        config=config,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(summary)
    return 0
