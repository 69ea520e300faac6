"""Records <-> JSON: the deterministic encoding the writer uses and the checked decoding.

Both directions live here so that a field added to a record is written and read back in one
place. Decoding is the format's validation: `parse_*` turn one JSON value into a record or raise
`DataFormatError` whose message starts with `<file>:<line>:` (a `Where`), and the writer runs the
same checks on every line before writing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmi3d_core.data.format import (
    FORMAT_VERSION,
    QUERY_TYPES,
    SPLITS,
    TARGETS_KEY,
    DatasetInfo,
    ImageRecord,
    ObjectRecord,
    QueryRecord,
)
from llmi3d_core.errors import DataFormatError

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
        out[TARGETS_KEY] = ids
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


def dumps_info(info: DatasetInfo, decimals: int = 6) -> str:
    """Serialise dataset.json deterministically (rounded floats, indented, keys in order)."""
    return json.dumps(_round_floats(info_to_dict(info), decimals), indent=2, sort_keys=False)


# --------------------------------------------------------------------------------------------
# JSON -> records (checked)
# --------------------------------------------------------------------------------------------


class Where:
    """Names a place in a file for error messages: `<file>:<line>: <field>`.

    Args:
        path: the file (or a label such as "<images.jsonl being written>").
        line: the line number from 1, or None for a whole-file JSON such as dataset.json.
    """

    def __init__(self, path: Path, line: int | None) -> None:
        self.path = path
        self.line = line

    def error(self, message: str) -> DataFormatError:
        """Return (not raise) a DataFormatError whose message starts with this place."""
        place = f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"
        return DataFormatError(f"{place}: {message}")


def _require_keys(data: Any, keys: tuple[str, ...], what: str, where: Where) -> None:
    if not isinstance(data, dict):
        raise where.error(f"{what} must be a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise where.error(f"{what} is missing key(s) {missing}; required: {list(keys)}")


def _as_str(value: Any, name: str, where: Where, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise where.error(f"{name} must be a non-empty string, got {value!r}")
    return value


def _as_int(value: Any, name: str, where: Where, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _as_array(value: Any, shape: tuple[int, ...], name: str, where: Where) -> np.ndarray:
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


def _as_unit(value: Any, name: str, where: Where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(f"{name} must be a number in [0, 1], got {value!r}")
    number = float(value)
    if not (0.0 <= number <= 1.0):
        raise where.error(f"{name} must be in [0, 1], got {number}")
    return number


def _as_box(value: Any, name: str, where: Where) -> np.ndarray:
    box = _as_array(value, (4,), name, where)
    if box[2] < box[0] or box[3] < box[1]:
        raise where.error(f"{name} must be [x1, y1, x2, y2], x1 <= x2 and y1 <= y2, got {value}")
    return box


def _check_rotation(R: np.ndarray, name: str, where: Where) -> None:
    if np.abs(R.T @ R - np.eye(3)).max() > _ROTATION_TOL or abs(np.linalg.det(R) - 1.0) > 1e-2:
        raise where.error(f"{name} must be a rotation (R^T R = I, det R = 1), got {R.tolist()}")


def parse_object(data: Any, where: Where) -> ObjectRecord:
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


def parse_image(data: Any, where: Where) -> ImageRecord:
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


def _optional_array(value: Any, shape: tuple[int, ...], name: str, where: Where) -> Any:
    return None if value is None else _as_array(value, shape, name, where)


def _parse_targets(data: dict[str, Any], where: Where) -> tuple[str, tuple[str, ...]]:
    """(target_object_id, target_object_ids) of a query line, checked for agreement."""
    single = data["target_object_id"]
    if single is not None:
        single = _as_str(str(single), "target_object_id", where)
    listed = data.get(TARGETS_KEY)
    if listed is None:
        if single is None:
            raise where.error(
                f"target_object_id is null but {TARGETS_KEY} is missing; a query with 0 or "
                f">= 2 targets lists them in {TARGETS_KEY} (e.g. [] for a negative query)"
            )
        return single, (single,)
    if not isinstance(listed, list) or not all(isinstance(i, str) and i for i in listed):
        raise where.error(f"{TARGETS_KEY} must be a list of non-empty strings, got {listed!r}")
    if len(set(listed)) != len(listed):
        raise where.error(f"{TARGETS_KEY} repeats an object: {listed}")
    if len(listed) == 1:
        if single not in (None, listed[0]):
            raise where.error(
                f"target_object_id {single!r} differs from the single entry of {TARGETS_KEY} "
                f"{listed}"
            )
        return listed[0], (listed[0],)
    if single not in (None, ""):
        raise where.error(
            f"target_object_id must be null for a query with {len(listed)} targets "
            f"({TARGETS_KEY} {listed}), got {single!r}"
        )
    return "", tuple(listed)


def parse_query(data: Any, where: Where) -> QueryRecord:
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
    known = (*_QUERY_KEYS, TARGETS_KEY)
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


def parse_info(data: Any, where: Where) -> DatasetInfo:
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
