"""The on-disk grounding dataset format (version 1): records, a streaming writer, a checked reader.

Every dataset we train or evaluate on (IG3D-Synth, converted Omni3D, Mono3DRefer, frames from a
rosbag2) is written through `DatasetWriter` and read back with `read_dataset`, so the model never
sees a source-specific layout. The full description, with examples, is docs/dataset_format.md.

    DIR/dataset.json     DatasetInfo: name, format_version, seed, categories, novel_categories,
                         camera_groups, generator
    DIR/images/<id>.png  the pictures (or .jpg), RGB
    DIR/images.jsonl     one ImageRecord a line, with its ObjectRecords (Omni3D-style keys)
    DIR/queries.jsonl    one QueryRecord a line (0, 1 or several target objects)

Frames and units: the camera optical frame (x right, y down, z forward), metres, pixels of the
stored image. `dimensions` are stored in Omni3D order [W, H, L]; `ObjectRecord.dims_lwh` gives
(L, W, H).

Malformed files raise `DataFormatError` whose message starts with `<file>:<line>:`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmi3d_core.errors import DataFormatError, InvalidInputError

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
IMAGES_JSONL = "images.jsonl"
QUERIES_JSONL = "queries.jsonl"
IMAGES_DIR = "images"

SPLITS = ("train", "val", "test")
QUERY_TYPES = ("caption", "question", "box_prompt", "point_prompt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Tolerances of the consistency checks (loose enough for float32 sources such as Omni3D).
_ROTATION_TOL = 1e-3  # |R^T R - I| and |det R - 1|
_CORNER_MEAN_TOL_M = 1e-2  # |mean(bbox3D_cam) - center_cam|, plus 1e-3 of the distance

_OBJECT_KEYS = (
    "object_id",
    "category_name",
    "attributes",
    "center_cam",
    "dimensions",
    "R_cam",
    "bbox2D_tight",
    "bbox2D_proj",
    "bbox3D_cam",
    "center_2D",
    "visibility",
    "truncation",
)
_IMAGE_KEYS = ("image_id", "file_name", "width", "height", "K", "scene", "camera_group", "objects")
_QUERY_KEYS = (
    "query_id",
    "image_id",
    "split",
    "type",
    "text",
    "answer",
    "target_object_id",
    "box_prompt",
    "point_prompt",
    "novel_category",
    "camera_group",
)
# Optional query key: the targets of a query with 0 or >= 2 of them (absent: [target_object_id]).
_TARGETS_KEY = "target_object_ids"
# A query with no target names an object that is not in the image; prompts would point at one.
_NEGATIVE_TYPES = ("caption", "question")
_INFO_KEYS = (
    "name",
    "format_version",
    "seed",
    "categories",
    "novel_categories",
    "camera_groups",
    "generator",
)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class ObjectRecord:
    """One annotated object of one image (Omni3D-style fields).

    Attributes:
        object_id: unique within the whole dataset (queries point at it), e.g. "000123_02".
        category_name: the object phrase, e.g. "lamp" (lower case, spaces allowed).
        attributes: words about the object, at least "color" and "size" when known
            (values are strings; sources without attributes give {}).
        center_cam: (3,) box centre in the camera optical frame, metres.
        dimensions: (3,) [W, H, L] metres, Omni3D order (see `dims_lwh`).
        R_cam: (3, 3) object-to-camera rotation (egocentric).
        bbox2D_tight: (4,) [x1, y1, x2, y2] px, tight box of the visible pixels.
        bbox2D_proj: (4,) [x1, y1, x2, y2] px, the projected 3D box clipped to the image.
        bbox3D_cam: (8, 3) box corners in the camera frame, metres (Omni3D corner order).
        center_2D: (2,) [u, v] px, projection of `center_cam` with the image's K.
        visibility: fraction of the object's projected pixels that are seen, 0..1.
        truncation: fraction of the projected 3D box outside the image, 0..1.
        extra: further keys of the source, kept and written back unchanged.
    """

    object_id: str
    category_name: str
    attributes: dict[str, Any]
    center_cam: np.ndarray
    dimensions: np.ndarray
    R_cam: np.ndarray
    bbox2D_tight: np.ndarray
    bbox2D_proj: np.ndarray
    bbox3D_cam: np.ndarray
    center_2D: np.ndarray
    visibility: float
    truncation: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dims_lwh(self) -> np.ndarray:
        """(3,) (L, W, H) metres, the order of geometry.box3d_corners."""
        w, h, length = self.dimensions
        return np.array([length, w, h], dtype=np.float64)


@dataclass
class ImageRecord:
    """One image with its intrinsics and objects.

    Attributes:
        image_id: unique within the dataset.
        file_name: path of the picture relative to the dataset directory, e.g. "images/000123.png".
        width: image width, px.
        height: image height, px.
        K: (3, 3) intrinsics of the stored image (fx, fy, cx, cy in px).
        scene: a scene label, e.g. "indoor", "street", "kitti".
        camera_group: name of the camera group (a key of DatasetInfo.camera_groups).
        objects: the annotated objects.
        extra: further keys of the source, kept and written back unchanged.
    """

    image_id: str
    file_name: str
    width: int
    height: int
    K: np.ndarray
    scene: str
    camera_group: str
    objects: list[ObjectRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def object_by_id(self, object_id: str) -> ObjectRecord:
        """Return the object with this id.

        Raises:
            KeyError: when the image has no such object.
        """
        for obj in self.objects:
            if obj.object_id == object_id:
                return obj
        raise KeyError(f"image {self.image_id!r} has no object {object_id!r}")


@dataclass
class QueryRecord:
    """One query (a sentence or prompt about one image) and the objects that answer it.

    A query has one target (the common case: every converter writes these), none (a negative
    query: "find the fire extinguisher" where there is none; the right answer is "not here") or
    several (a multi-target query: "all the chairs"; every matching object is a target).

    `target_object_ids` is the authority. `target_object_id` mirrors it for the single-target
    case, so code written for one target keeps working: it is the one id when there is exactly
    one target, and "" otherwise (null in the JSON). Give either field when building a record;
    the other is filled in.

    Attributes:
        query_id: unique within the dataset.
        image_id: the image asked about.
        split: "train", "val" or "test".
        type: "caption", "question", "box_prompt" or "point_prompt" (a negative query is a
            caption or a question).
        text: the sentence given to the model.
        answer: the object phrase the model should name, e.g. "lamp"; for a negative query the
            category that was asked for (and is not there).
        target_object_id: the single target's object id, or "" when the query has 0 or >= 2.
        box_prompt: (4,) [x1, y1, x2, y2] px of the image, or None.
        point_prompt: (2,) [u, v] px of the image, or None.
        novel_category: True when the target's category (for a negative: the named one) is held
            out of training.
        camera_group: the image's camera group (copied so queries can be filtered alone).
        extra: further keys (e.g. "relation", "need"), kept and written back unchanged.
        target_object_ids: every target's object id, in a fixed order; () for a negative query.

    Raises:
        InvalidInputError: when the two target fields disagree.
    """

    query_id: str
    image_id: str
    split: str
    type: str
    text: str
    answer: str
    target_object_id: str = ""
    box_prompt: np.ndarray | None = None
    point_prompt: np.ndarray | None = None
    novel_category: bool = False
    camera_group: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    target_object_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ids = tuple(str(i) for i in self.target_object_ids)
        if not ids and self.target_object_id:
            ids = (self.target_object_id,)
        elif len(ids) == 1 and not self.target_object_id:
            self.target_object_id = ids[0]
        elif len(ids) == 1 and self.target_object_id != ids[0]:
            raise InvalidInputError(
                f"query {self.query_id!r}: target_object_id {self.target_object_id!r} differs "
                f"from the single entry of target_object_ids {list(ids)}"
            )
        elif len(ids) > 1 and self.target_object_id:
            raise InvalidInputError(
                f"query {self.query_id!r}: target_object_id must be '' for a query with "
                f"{len(ids)} targets {list(ids)}, got {self.target_object_id!r}"
            )
        self.target_object_ids = ids

    @property
    def is_negative(self) -> bool:
        """True when no object of the image answers the query (the answer is "not here")."""
        return not self.target_object_ids

    @property
    def is_multi_target(self) -> bool:
        """True when several objects answer the query ("all the chairs")."""
        return len(self.target_object_ids) > 1


@dataclass
class DatasetInfo:
    """Contents of dataset.json.

    Attributes:
        name: dataset name, e.g. "ig3d-synth".
        seed: the generator seed, or None for converted real data.
        categories: every category name that may appear.
        novel_categories: categories never used as a training target (open-vocabulary split).
        camera_groups: group name -> description dict. Keys used by the tools: "domain" (e.g.
            "source" / "target", for camera-domain splits), "width", "height", "fx_range".
        generator: how the data was made (program, version, arguments), free form.
        format_version: always FORMAT_VERSION when written by this module.
        extra: further keys, kept.
    """

    name: str
    seed: int | None = None
    categories: list[str] = field(default_factory=list)
    novel_categories: list[str] = field(default_factory=list)
    camera_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """A dataset read from disk: its info, images (in file order) and queries (in file order)."""

    root: Path
    info: DatasetInfo
    images: list[ImageRecord]
    queries: list[QueryRecord]
    _by_id: dict[str, ImageRecord] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {im.image_id: im for im in self.images}

    def image(self, image_id: str) -> ImageRecord:
        """Return the image record with this id (KeyError when absent)."""
        return self._by_id[image_id]

    def image_path(self, image_id: str) -> Path:
        """Return the absolute path of an image's picture file."""
        return self.root / self._by_id[image_id].file_name

    def target(self, query: QueryRecord) -> ObjectRecord:
        """Return the object a single-target query points at.

        Raises:
            InvalidInputError: when the query has no target or several (use `targets`).
            KeyError: when the image has no such object.
        """
        if len(query.target_object_ids) != 1:
            raise InvalidInputError(
                f"query {query.query_id!r} has {len(query.target_object_ids)} targets; "
                "Dataset.target() is for single-target queries, use Dataset.targets()"
            )
        return self._by_id[query.image_id].object_by_id(query.target_object_id)

    def targets(self, query: QueryRecord) -> list[ObjectRecord]:
        """Return every object a query points at, in `target_object_ids` order ([] if negative).

        Raises:
            KeyError: when the image has no such object.
        """
        image = self._by_id[query.image_id]
        return [image.object_by_id(object_id) for object_id in query.target_object_ids]


# --------------------------------------------------------------------------------------------
# Records -> JSON
# --------------------------------------------------------------------------------------------


def _round_floats(value: Any, decimals: int) -> Any:
    """Turn numpy values into JSON types, rounding floats (keeps files small and byte-stable)."""
    if isinstance(value, np.ndarray):
        return _round_floats(value.tolist(), decimals)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        rounded = round(float(value), decimals)
        return 0.0 if rounded == 0.0 else rounded  # no "-0.0"
    if isinstance(value, dict):
        return {str(k): _round_floats(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round_floats(v, decimals) for v in value]
    return value


def object_to_dict(obj: ObjectRecord) -> dict[str, Any]:
    """Return the JSON dict of an object (keys in the documented order, extras last)."""
    out: dict[str, Any] = {
        "object_id": obj.object_id,
        "category_name": obj.category_name,
        "attributes": dict(obj.attributes),
        "center_cam": obj.center_cam,
        "dimensions": obj.dimensions,
        "R_cam": obj.R_cam,
        "bbox2D_tight": obj.bbox2D_tight,
        "bbox2D_proj": obj.bbox2D_proj,
        "bbox3D_cam": obj.bbox3D_cam,
        "center_2D": obj.center_2D,
        "visibility": float(obj.visibility),
        "truncation": float(obj.truncation),
    }
    out.update(obj.extra)
    return out


def image_to_dict(image: ImageRecord) -> dict[str, Any]:
    """Return the JSON dict of an image record, objects included."""
    out: dict[str, Any] = {
        "image_id": image.image_id,
        "file_name": image.file_name,
        "width": int(image.width),
        "height": int(image.height),
        "K": image.K,
        "scene": image.scene,
        "camera_group": image.camera_group,
        "objects": [object_to_dict(o) for o in image.objects],
    }
    out.update(image.extra)
    return out


def query_to_dict(query: QueryRecord) -> dict[str, Any]:
    """Return the JSON dict of a query record.

    A single-target query is written exactly as before multi-target queries existed (only
    "target_object_id"), so old readers and byte-for-byte comparisons keep working; a query
    with 0 or >= 2 targets has "target_object_id": null and lists them in "target_object_ids".
    """
    ids = list(query.target_object_ids)
    out: dict[str, Any] = {
        "query_id": query.query_id,
        "image_id": query.image_id,
        "split": query.split,
        "type": query.type,
        "text": query.text,
        "answer": query.answer,
        "target_object_id": query.target_object_id or None,
    }
    if len(ids) != 1 or ids[0] != query.target_object_id:
        out[_TARGETS_KEY] = ids
    out |= {
        "box_prompt": query.box_prompt,
        "point_prompt": query.point_prompt,
        "novel_category": bool(query.novel_category),
        "camera_group": query.camera_group,
    }
    out.update(query.extra)
    return out


def info_to_dict(info: DatasetInfo) -> dict[str, Any]:
    """Return the JSON dict of dataset.json."""
    out: dict[str, Any] = {
        "name": info.name,
        "format_version": info.format_version,
        "seed": info.seed,
        "categories": list(info.categories),
        "novel_categories": list(info.novel_categories),
        "camera_groups": info.camera_groups,
        "generator": info.generator,
    }
    out.update(info.extra)
    return out


def dumps_line(data: dict[str, Any], decimals: int = 6) -> str:
    """Serialise one JSONL line deterministically (rounded floats, no NaN, compact separators)."""
    return json.dumps(
        _round_floats(data, decimals), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


# --------------------------------------------------------------------------------------------
# JSON -> records (checked)
# --------------------------------------------------------------------------------------------


class _Where:
    """Names a place in a file for error messages: `<file>:<line>: <field>`."""

    def __init__(self, path: Path, line: int | None) -> None:
        self.path = path
        self.line = line

    def error(self, message: str) -> DataFormatError:
        place = f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"
        return DataFormatError(f"{place}: {message}")


def _require_keys(data: Any, keys: tuple[str, ...], what: str, where: _Where) -> None:
    if not isinstance(data, dict):
        raise where.error(f"{what} must be a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise where.error(f"{what} is missing key(s) {missing}; required: {list(keys)}")


def _as_str(value: Any, name: str, where: _Where, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise where.error(f"{name} must be a non-empty string, got {value!r}")
    return value


def _as_int(value: Any, name: str, where: _Where, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _as_array(value: Any, shape: tuple[int, ...], name: str, where: _Where) -> np.ndarray:
    """Convert a nested list of numbers to a float64 array of exactly `shape`, all finite."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise where.error(f"{name} must be numbers of shape {list(shape)}, got {value!r}") from None
    if array.shape != shape:
        raise where.error(f"{name} must have shape {list(shape)}, got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise where.error(f"{name} must be finite, got {value!r}")
    return array


def _as_unit(value: Any, name: str, where: _Where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(f"{name} must be a number in [0, 1], got {value!r}")
    number = float(value)
    if not (0.0 <= number <= 1.0):
        raise where.error(f"{name} must be in [0, 1], got {number}")
    return number


def _as_box(value: Any, name: str, where: _Where) -> np.ndarray:
    box = _as_array(value, (4,), name, where)
    if box[2] < box[0] or box[3] < box[1]:
        raise where.error(f"{name} must be [x1, y1, x2, y2], x1 <= x2 and y1 <= y2, got {value}")
    return box


def _check_rotation(R: np.ndarray, name: str, where: _Where) -> None:
    if np.abs(R.T @ R - np.eye(3)).max() > _ROTATION_TOL or abs(np.linalg.det(R) - 1.0) > 1e-2:
        raise where.error(f"{name} must be a rotation (R^T R = I, det R = 1), got {R.tolist()}")


def parse_object(data: Any, where: _Where) -> ObjectRecord:
    """Check and convert one object dict (see `ObjectRecord`).

    Raises:
        DataFormatError: naming the file, line, object and field that is wrong.
    """
    _require_keys(data, _OBJECT_KEYS, "object", where)
    oid = data["object_id"]
    if isinstance(oid, bool) or not isinstance(oid, (str, int)) or oid == "":
        raise where.error(f"object_id must be a non-empty string, got {oid!r}")
    oid = str(oid)
    tag = f"object {oid!r}: "
    attributes = data["attributes"]
    if not isinstance(attributes, dict):
        raise where.error(f"{tag}attributes must be an object, got {attributes!r}")
    dimensions = _as_array(data["dimensions"], (3,), tag + "dimensions", where)
    if np.any(dimensions <= 0):
        raise where.error(f"{tag}dimensions [W, H, L] must be > 0 m, got {dimensions.tolist()}")
    center = _as_array(data["center_cam"], (3,), tag + "center_cam", where)
    R = _as_array(data["R_cam"], (3, 3), tag + "R_cam", where)
    _check_rotation(R, tag + "R_cam", where)
    corners = _as_array(data["bbox3D_cam"], (8, 3), tag + "bbox3D_cam", where)
    gap = float(np.linalg.norm(corners.mean(axis=0) - center))
    if gap > _CORNER_MEAN_TOL_M + 1e-3 * float(np.linalg.norm(center)):
        raise where.error(f"{tag}bbox3D_cam corners are centred {gap:.3f} m away from center_cam")
    return ObjectRecord(
        object_id=oid,
        category_name=_as_str(data["category_name"], tag + "category_name", where),
        attributes=dict(attributes),
        center_cam=center,
        dimensions=dimensions,
        R_cam=R,
        bbox2D_tight=_as_box(data["bbox2D_tight"], tag + "bbox2D_tight", where),
        bbox2D_proj=_as_box(data["bbox2D_proj"], tag + "bbox2D_proj", where),
        bbox3D_cam=corners,
        center_2D=_as_array(data["center_2D"], (2,), tag + "center_2D", where),
        visibility=_as_unit(data["visibility"], tag + "visibility", where),
        truncation=_as_unit(data["truncation"], tag + "truncation", where),
        extra={k: v for k, v in data.items() if k not in _OBJECT_KEYS},
    )


def parse_image(data: Any, where: _Where) -> ImageRecord:
    """Check and convert one images.jsonl line (see `ImageRecord`).

    Raises:
        DataFormatError: naming the file, line and field that is wrong.
    """
    _require_keys(data, _IMAGE_KEYS, "image record", where)
    file_name = _as_str(data["file_name"], "file_name", where)
    if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
        raise where.error(f"file_name must be relative to the dataset directory, got {file_name!r}")
    K = _as_array(data["K"], (3, 3), "K", where)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or K[1, 0] != 0 or K[2].tolist() != [0.0, 0.0, 1.0]:
        raise where.error(f"K must be [[fx,s,cx],[0,fy,cy],[0,0,1]], fx, fy > 0; got {K.tolist()}")
    if not isinstance(data["objects"], list):
        raise where.error(f"objects must be a list, got {type(data['objects']).__name__}")
    objects = [parse_object(o, where) for o in data["objects"]]
    ids = [o.object_id for o in objects]
    if len(set(ids)) != len(ids):
        raise where.error(f"object_id values repeat within the image: {ids}")
    return ImageRecord(
        image_id=_as_str(str(data["image_id"]), "image_id", where),
        file_name=file_name,
        width=_as_int(data["width"], "width", where),
        height=_as_int(data["height"], "height", where),
        K=K,
        scene=_as_str(data["scene"], "scene", where, allow_empty=True),
        camera_group=_as_str(data["camera_group"], "camera_group", where, allow_empty=True),
        objects=objects,
        extra={k: v for k, v in data.items() if k not in _IMAGE_KEYS},
    )


def _optional_array(value: Any, shape: tuple[int, ...], name: str, where: _Where) -> Any:
    return None if value is None else _as_array(value, shape, name, where)


def _parse_targets(data: dict[str, Any], where: _Where) -> tuple[str, tuple[str, ...]]:
    """(target_object_id, target_object_ids) of a query line, checked for agreement."""
    single = data["target_object_id"]
    if single is not None:
        single = _as_str(str(single), "target_object_id", where)
    listed = data.get(_TARGETS_KEY)
    if listed is None:
        if single is None:
            raise where.error(
                f"target_object_id is null but {_TARGETS_KEY} is missing; a query with 0 or "
                f">= 2 targets lists them in {_TARGETS_KEY} (e.g. [] for a negative query)"
            )
        return single, (single,)
    if not isinstance(listed, list) or not all(isinstance(i, str) and i for i in listed):
        raise where.error(f"{_TARGETS_KEY} must be a list of non-empty strings, got {listed!r}")
    if len(set(listed)) != len(listed):
        raise where.error(f"{_TARGETS_KEY} repeats an object: {listed}")
    if len(listed) == 1:
        if single not in (None, listed[0]):
            raise where.error(
                f"target_object_id {single!r} differs from the single entry of {_TARGETS_KEY} "
                f"{listed}"
            )
        return listed[0], (listed[0],)
    if single not in (None, ""):
        raise where.error(
            f"target_object_id must be null for a query with {len(listed)} targets "
            f"({_TARGETS_KEY} {listed}), got {single!r}"
        )
    return "", tuple(listed)


def parse_query(data: Any, where: _Where) -> QueryRecord:
    """Check and convert one queries.jsonl line (see `QueryRecord`).

    Raises:
        DataFormatError: naming the file, line and field that is wrong.
    """
    _require_keys(data, _QUERY_KEYS, "query record", where)
    split = data["split"]
    if split not in SPLITS:
        raise where.error(f"split must be one of {list(SPLITS)}, got {split!r}")
    qtype = data["type"]
    if qtype not in QUERY_TYPES:
        raise where.error(f"type must be one of {list(QUERY_TYPES)}, got {qtype!r}")
    box = _optional_array(data["box_prompt"], (4,), "box_prompt", where)
    point = _optional_array(data["point_prompt"], (2,), "point_prompt", where)
    if qtype == "box_prompt" and box is None:
        raise where.error("a query of type 'box_prompt' needs box_prompt [x1, y1, x2, y2]")
    if qtype == "point_prompt" and point is None:
        raise where.error("a query of type 'point_prompt' needs point_prompt [u, v]")
    if not isinstance(data["novel_category"], bool):
        raise where.error(f"novel_category must be true or false, got {data['novel_category']!r}")
    target_id, target_ids = _parse_targets(data, where)
    if not target_ids:
        if qtype not in _NEGATIVE_TYPES:
            raise where.error(
                f"a negative query (no target) must be of type {list(_NEGATIVE_TYPES)}, "
                f"got {qtype!r}"
            )
        if box is not None or point is not None:
            raise where.error(
                "a negative query (no target) has no box_prompt or point_prompt: a prompt "
                "points at an object that is there"
            )
    known = (*_QUERY_KEYS, _TARGETS_KEY)
    return QueryRecord(
        query_id=_as_str(str(data["query_id"]), "query_id", where),
        image_id=_as_str(str(data["image_id"]), "image_id", where),
        split=split,
        type=qtype,
        text=_as_str(data["text"], "text", where),
        answer=_as_str(data["answer"], "answer", where),
        target_object_id=target_id,
        box_prompt=box,
        point_prompt=point,
        novel_category=data["novel_category"],
        camera_group=_as_str(data["camera_group"], "camera_group", where, allow_empty=True),
        extra={k: v for k, v in data.items() if k not in known},
        target_object_ids=target_ids,
    )


def parse_info(data: Any, where: _Where) -> DatasetInfo:
    """Check and convert dataset.json.

    Raises:
        DataFormatError: naming the file and the field that is wrong.
    """
    _require_keys(data, _INFO_KEYS, "dataset.json", where)
    if data["format_version"] != FORMAT_VERSION:
        raise where.error(
            f"format_version {data['format_version']!r} is not supported; this reader knows "
            f"version {FORMAT_VERSION}"
        )
    for key in ("categories", "novel_categories"):
        if not isinstance(data[key], list) or not all(isinstance(c, str) for c in data[key]):
            raise where.error(f"{key} must be a list of strings, got {data[key]!r}")
    unknown_novel = sorted(set(data["novel_categories"]) - set(data["categories"]))
    if unknown_novel:
        raise where.error(f"novel_categories {unknown_novel} are not in categories")
    for key in ("camera_groups", "generator"):
        if not isinstance(data[key], dict):
            raise where.error(f"{key} must be an object, got {data[key]!r}")
    seed = data["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise where.error(f"seed must be an integer or null, got {seed!r}")
    return DatasetInfo(
        name=_as_str(data["name"], "name", where),
        seed=seed,
        categories=list(data["categories"]),
        novel_categories=list(data["novel_categories"]),
        camera_groups=dict(data["camera_groups"]),
        generator=dict(data["generator"]),
        format_version=FORMAT_VERSION,
        extra={k: v for k, v in data.items() if k not in _INFO_KEYS},
    )


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number from 1, parsed JSON) for each non-blank line of a JSONL file.

    Raises:
        DataFormatError: when a line is not valid JSON (the message names file and line).
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({err.msg})") from None


def iter_images(path: str | Path) -> Iterator[ImageRecord]:
    """Stream the ImageRecords of an images.jsonl file, checking each line."""
    path = Path(path)
    for number, data in iter_jsonl(path):
        yield parse_image(data, _Where(path, number))


def iter_queries(path: str | Path) -> Iterator[QueryRecord]:
    """Stream the QueryRecords of a queries.jsonl file, checking each line (not references)."""
    path = Path(path)
    for number, data in iter_jsonl(path):
        yield parse_query(data, _Where(path, number))


def read_info(root: str | Path) -> DatasetInfo:
    """Read and check DIR/dataset.json.

    Raises:
        DataFormatError: when the file is missing, not JSON, or has wrong fields.
    """
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        raise DataFormatError(
            f"{path}: not found; a dataset directory holds {DATASET_JSON}, {IMAGES_JSONL}, "
            f"{QUERIES_JSONL} and {IMAGES_DIR}/ (is the writer finished?)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    return parse_info(data, _Where(path, None))


def read_dataset(root: str | Path, *, check_files: bool = False) -> Dataset:
    """Read a whole dataset directory and check it, cross-references included.

    Args:
        root: the dataset directory.
        check_files: also check that every picture file exists (a stat per image).

    Returns:
        The Dataset, images and queries in file order.

    Raises:
        DataFormatError: for the first problem found, naming the file and line.
    """
    root = Path(root)
    info = read_info(root)
    images_path = root / IMAGES_JSONL
    queries_path = root / QUERIES_JSONL
    for path in (images_path, queries_path):
        if not path.is_file():
            raise DataFormatError(f"{path}: not found")
    images: list[ImageRecord] = []
    image_ids: dict[str, ImageRecord] = {}
    object_ids: set[str] = set()
    for number, data in iter_jsonl(images_path):
        where = _Where(images_path, number)
        image = parse_image(data, where)
        if image.image_id in image_ids:
            raise where.error(f"image_id {image.image_id!r} repeats an earlier line")
        for obj in image.objects:
            if obj.object_id in object_ids:
                raise where.error(f"object_id {obj.object_id!r} repeats an earlier image's object")
            object_ids.add(obj.object_id)
        if check_files and not (root / image.file_name).is_file():
            raise where.error(f"picture {image.file_name!r} does not exist under {root}")
        image_ids[image.image_id] = image
        images.append(image)
    queries: list[QueryRecord] = []
    query_ids: set[str] = set()
    for number, data in iter_jsonl(queries_path):
        where = _Where(queries_path, number)
        query = parse_query(data, where)
        _check_query_refs(query, image_ids, query_ids, where)
        query_ids.add(query.query_id)
        queries.append(query)
    return Dataset(root=root, info=info, images=images, queries=queries)


def _check_query_refs(
    query: QueryRecord, images: dict[str, ImageRecord], seen: set[str], where: _Where
) -> None:
    if query.query_id in seen:
        raise where.error(f"query_id {query.query_id!r} repeats an earlier line")
    image = images.get(query.image_id)
    if image is None:
        raise where.error(f"image_id {query.image_id!r} is not in {IMAGES_JSONL}")
    object_ids = {o.object_id for o in image.objects}
    for index, object_id in enumerate(query.target_object_ids):
        if object_id not in object_ids:
            name = (
                "target_object_id"
                if len(query.target_object_ids) == 1
                else f"{_TARGETS_KEY}[{index}]"
            )
            raise where.error(
                f"{name} {object_id!r} is not an object of image {query.image_id!r}; its "
                f"objects: {[o.object_id for o in image.objects]}"
            )


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def select_queries(dataset: Dataset, spec: str) -> list[QueryRecord]:
    """Pick the queries of a split specification.

    Grammar: ``SPLIT[:novel|:base][@GROUP[,GROUP...]]`` where SPLIT is train, val or test;
    ":novel" keeps only targets of held-out categories, ":base" only seen ones; each GROUP is a
    camera-group name or a "domain" value of DatasetInfo.camera_groups (e.g. "source").

    Examples: "train", "test:novel" (open-vocabulary test), "train@source" and "test@target"
    (camera-domain shift), "val:base@kitti_like".

    Raises:
        InvalidInputError: for an unknown split, filter or camera group.
    """
    head, _, groups_text = spec.partition("@")
    split, _, novelty = head.partition(":")
    if split not in SPLITS:
        raise InvalidInputError(f"split spec {spec!r}: split must be one of {list(SPLITS)}")
    if novelty not in ("", "novel", "base"):
        raise InvalidInputError(f"split spec {spec!r}: filter must be ':novel' or ':base'")
    groups: set[str] | None = None
    if groups_text:
        groups = set()
        known = dataset.info.camera_groups
        for name in groups_text.split(","):
            matched = {g for g, d in known.items() if g == name or d.get("domain") == name}
            if not matched:
                domains = sorted({str(d.get("domain")) for d in known.values() if "domain" in d})
                raise InvalidInputError(
                    f"split spec {spec!r}: {name!r} is neither a camera group {sorted(known)} "
                    f"nor a camera domain {domains}"
                )
            groups |= matched
    out = []
    for query in dataset.queries:
        if query.split != split:
            continue
        if novelty == "novel" and not query.novel_category:
            continue
        if novelty == "base" and query.novel_category:
            continue
        if groups is not None and query.camera_group not in groups:
            continue
        out.append(query)
    return out


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def encode_image(image_rgb: np.ndarray, suffix: str) -> bytes:
    """Encode an (H, W, 3) uint8 RGB image as PNG or JPEG bytes (deterministic).

    Raises:
        InvalidInputError: for a wrong shape, dtype or suffix.
    """
    import cv2

    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise InvalidInputError(
            f"image must be (H, W, 3) uint8 RGB, got {image_rgb.shape} {image_rgb.dtype}"
        )
    if suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(f"image suffix must be one of {IMAGE_SUFFIXES}, got {suffix!r}")
    ok, buffer = cv2.imencode(suffix.lower(), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InvalidInputError(f"OpenCV could not encode a {image_rgb.shape} image as {suffix}")
    return bytes(buffer.tobytes())


class DatasetWriter:
    """Write a dataset directory line by line (streaming: memory does not grow with images).

    Use as a context manager; dataset.json is written last, on a clean exit, so a directory
    without it is an unfinished write:

        with DatasetWriter(out_dir, DatasetInfo(name="ig3d-synth", seed=0)) as writer:
            writer.add_image(image_record, image_rgb)      # writes images/<id>.png and one line
            writer.add_query(query_record)                 # after its image

    Every record is checked with the reader's own checks before it is written, so a written
    dataset always reads back. If `info.categories` is empty at close, it is filled with the
    sorted categories seen.

    Args:
        root: the dataset directory (created).
        info: the dataset.json contents; may still be changed through `self.info` before close.
        overwrite: allow writing into a directory that already holds a dataset.
        float_decimals: digits kept after the decimal point (6: micrometres and micro-pixels).

    Raises:
        InvalidInputError: when root already holds a dataset and overwrite is False.
    """

    def __init__(
        self,
        root: str | Path,
        info: DatasetInfo,
        *,
        overwrite: bool = False,
        float_decimals: int = 6,
    ) -> None:
        self.root = Path(root)
        self.info = info
        self.float_decimals = float_decimals
        names = (DATASET_JSON, IMAGES_JSONL, QUERIES_JSONL)
        existing = [n for n in names if (self.root / n).exists()]
        if existing and not overwrite:
            raise InvalidInputError(
                f"{self.root} already holds {existing}; pass overwrite=True (CLI: --overwrite) "
                "or choose another directory"
            )
        (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        if overwrite:
            (self.root / DATASET_JSON).unlink(missing_ok=True)
        self._images = open(self.root / IMAGES_JSONL, "w", encoding="utf-8")  # noqa: SIM115
        self._queries = open(self.root / QUERIES_JSONL, "w", encoding="utf-8")  # noqa: SIM115
        self._objects_of: dict[str, set[str]] = {}
        self._object_ids: set[str] = set()
        self._query_ids: set[str] = set()
        self._categories: set[str] = set()
        self.num_images = 0
        self.num_queries = 0
        self._closed = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._images.close()
            self._queries.close()
            self._closed = True

    def _check(self, line: str, parse: Any, what: str) -> Any:
        """Run the reader's checks on the line about to be written (InvalidInputError if bad)."""
        where = _Where(Path(f"<{what} being written>"), self.num_images + self.num_queries + 1)
        try:
            return parse(json.loads(line), where)
        except DataFormatError as err:
            raise InvalidInputError(str(err)) from None

    def add_image(
        self,
        record: ImageRecord,
        image_rgb: np.ndarray | None = None,
        *,
        encoded: bytes | None = None,
    ) -> None:
        """Write one image record and (optionally) its picture.

        Args:
            record: the image and its objects; record.file_name is where the picture goes.
            image_rgb: (H, W, 3) uint8 RGB picture to encode (by file_name's suffix), or
            encoded: already-encoded file bytes (e.g. a JPEG copied unchanged), or neither when
                the picture is already at root/file_name.

        Raises:
            InvalidInputError: bad record, repeated id, or picture size not (height, width).
        """
        if self._closed:
            raise InvalidInputError("DatasetWriter is closed")
        line = dumps_line(image_to_dict(record), self.float_decimals)
        checked: ImageRecord = self._check(line, parse_image, IMAGES_JSONL)
        if checked.image_id in self._objects_of:
            raise InvalidInputError(f"image_id {checked.image_id!r} was already written")
        ids = {o.object_id for o in checked.objects}
        repeated = sorted(ids & self._object_ids)
        if repeated:
            raise InvalidInputError(f"object_id(s) {repeated} were already written")
        target = self.root / checked.file_name
        if image_rgb is not None:
            if image_rgb.shape[:2] != (checked.height, checked.width):
                raise InvalidInputError(
                    f"image {checked.image_id!r}: picture is {image_rgb.shape[:2]} (H, W) but the "
                    f"record says ({checked.height}, {checked.width})"
                )
            encoded = encode_image(image_rgb, target.suffix)
        if encoded is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encoded)
        elif not target.is_file():
            raise InvalidInputError(
                f"image {checked.image_id!r}: no picture given and {target} does not exist"
            )
        self._images.write(line + "\n")
        self._objects_of[checked.image_id] = ids
        self._object_ids |= ids
        self._categories |= {o.category_name for o in checked.objects}
        self.num_images += 1

    def add_query(self, record: QueryRecord) -> None:
        """Write one query; its image must have been added before.

        Raises:
            InvalidInputError: bad record, repeated id, unknown image or target object.
        """
        if self._closed:
            raise InvalidInputError("DatasetWriter is closed")
        line = dumps_line(query_to_dict(record), self.float_decimals)
        checked: QueryRecord = self._check(line, parse_query, QUERIES_JSONL)
        if checked.query_id in self._query_ids:
            raise InvalidInputError(f"query_id {checked.query_id!r} was already written")
        objects = self._objects_of.get(checked.image_id)
        if objects is None:
            raise InvalidInputError(
                f"query {checked.query_id!r}: image {checked.image_id!r} has not been added"
            )
        for object_id in checked.target_object_ids:
            if object_id not in objects:
                raise InvalidInputError(
                    f"query {checked.query_id!r}: image {checked.image_id!r} has no object "
                    f"{object_id!r}; its objects: {sorted(objects)}"
                )
        self._queries.write(line + "\n")
        self._query_ids.add(checked.query_id)
        self.num_queries += 1

    def close(self) -> Path:
        """Flush the JSONL files and write dataset.json; return the dataset directory."""
        if self._closed:
            return self.root
        self._images.close()
        self._queries.close()
        if not self.info.categories:
            self.info.categories = sorted(self._categories)
        text = json.dumps(
            _round_floats(info_to_dict(self.info), self.float_decimals), indent=2, sort_keys=False
        )
        parse_info(json.loads(text), _Where(self.root / DATASET_JSON, None))
        (self.root / DATASET_JSON).write_text(text + "\n", encoding="utf-8")
        self._closed = True
        return self.root


def image_file_name(image_id: str, suffix: str = ".png") -> str:
    """Return the conventional relative picture path of an image id: images/<id><suffix>."""
    if suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(f"image suffix must be one of {IMAGE_SUFFIXES}, got {suffix!r}")
    return f"{IMAGES_DIR}/{image_id}{suffix}"
