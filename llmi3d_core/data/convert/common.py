"""What the real-data converters (omni3d, mono3drefer, bag) share, so none imports another.

- JSON validators whose errors name the file and the JSON path, so a message reads
  "a.json: annotations[3].dimensions: expected 3 positive numbers, got [1, -2]";
- projection of a 3D box into the image (numpy, camera optical frame, metres, px);
- template captions that single out one object among those of its image;
- the summary of a conversion, and `ConversionOutput`, which writes images and queries while
  counting them and tracking each camera group's image size and fx;
- picture decoding and the CLI flags every converter has.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from llmi3d_core.data.format import SPLITS, ImageRecord, ObjectRecord, QueryRecord
from llmi3d_core.data.writer import DatasetWriter
from llmi3d_core.errors import DataFormatError, InvalidInputError
from llmi3d_core.iou import box2d_area

# ---------------------------------------------------------------------------------------------
# JSON validators: `where` names the file and the JSON path (or line)
# ---------------------------------------------------------------------------------------------


def expected_error(where: str, expected: str, value: Any) -> DataFormatError:
    """The DataFormatError "<where>: expected <expected>, got <value>" (value cut to 120 chars)."""
    shown = repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return DataFormatError(f"{where}: expected {expected}, got {shown}")


def expect_key(obj: Any, key: str, where: str) -> Any:
    """Return obj[key], raising DataFormatError (naming `where`) if obj is no dict or lacks it."""
    if not isinstance(obj, dict):
        raise expected_error(where, "a JSON object", obj)
    if key not in obj:
        keys = ", ".join(sorted(str(k) for k in obj)) or "none"
        raise DataFormatError(f"{where}: missing key {key!r} (keys present: {keys})")
    return obj[key]


def expect_int(value: Any, where: str) -> int:
    """Return value as int; bools and non-integral numbers are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise expected_error(where, "an integer", value)
    return int(value)


def expect_float(value: Any, where: str) -> float:
    """Return value as a finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise expected_error(where, "a finite number", value)
    return float(value)


def expect_str(value: Any, where: str) -> str:
    """Return value if it is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise expected_error(where, "a non-empty string", value)
    return value


def expect_bool(value: Any, where: str) -> bool:
    """Return value as bool; accepts true/false and the integers 0/1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise expected_error(where, "true/false", value)


def expect_array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Return value as a finite float64 array of exactly `shape` (nested JSON lists)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise expected_error(where, f"numbers of shape {list(shape)}", value) from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise expected_error(where, f"finite numbers of shape {list(shape)}", value)
    return array


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


def load_json_records(path: Path, what: str = "file") -> list[tuple[str, Any]]:
    """Read a JSON list or JSON Lines file (one value a line, blank lines skipped).

    Returns:
        (where, value) per entry; where is "<path>: [index]" or "<path>: line <number>".

    Raises:
        DataFormatError: "<path>: <what> not found", or invalid JSON with its line.
    """
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: {what} not found") from None
    if raw.lstrip().startswith("["):
        return [(f"{path}: [{i}]", entry) for i, entry in enumerate(load_json(path))]
    entries: list[tuple[str, Any]] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append((f"{path}: line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}: line {number}: invalid JSON ({err.msg})") from None
    return entries


# ---------------------------------------------------------------------------------------------
# Projecting 3D boxes (numpy, camera optical frame, metres, px)
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
    from llmi3d_core.geometry import box3d_corners  # noqa: PLC0415 (geometry imports torch; converters stay torch-free)

    w, h, length = (float(d) for d in dims_whl)
    return np.asarray(box3d_corners(np.asarray(center, float), np.array([length, w, h]), R))


def project_points(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection (..., 3) camera-frame points (z > 0) -> (..., 2) pixels."""
    from llmi3d_core.geometry import project  # noqa: PLC0415 (geometry imports torch; converters stay torch-free)

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
    if box2d_area(clipped) <= 0.0:
        return None
    truncation = 1.0 - box2d_area(clipped) / max(box2d_area(full), 1e-12)
    return ProjectedBox(
        corners=corners,
        center_2D=project_points(np.asarray(center, dtype=np.float64), K),
        bbox2D_full=full,
        bbox2D_clipped=clipped,
        truncation=float(np.clip(truncation, 0.0, 1.0)),
    )


# ---------------------------------------------------------------------------------------------
# Template captions
# ---------------------------------------------------------------------------------------------


def category_phrase(name: str) -> str:
    """A source dataset's class name -> our object phrase: "Person_sitting" -> "person sitting"."""
    return name.strip().lower().replace("_", " ")


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


def template_captions(
    objects: Sequence[ObjectRecord], *, width: int, config: TemplateConfig
) -> list[str | None]:
    """`template_caption` of every object of one image (None where none is unambiguous)."""
    categories = [o.category_name for o in objects]
    centers = np.stack([o.center_cam for o in objects])
    centers_2d = np.stack([o.center_2D for o in objects])
    return [
        template_caption(categories, centers, centers_2d, index, width=width, config=config)
        for index in range(len(objects))
    ]


# ---------------------------------------------------------------------------------------------
# Writing a converted dataset
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


@dataclass
class ConversionOutput:
    """A converter's DatasetWriter with its summary: every image and query written is counted.

    Attributes:
        writer: the open dataset writer.
        summary: the conversion summary to count into.
        camera_groups: dataset.json's camera_groups: per group, the size of its first image and
            the range of fx seen (assign to writer.info.camera_groups before the writer closes).
    """

    writer: DatasetWriter
    summary: ConversionSummary
    camera_groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add_image(
        self,
        record: ImageRecord,
        image_rgb: np.ndarray | None = None,
        *,
        encoded: bytes | None = None,
    ) -> None:
        """Write one image (decoded RGB or encoded bytes, as DatasetWriter.add_image)."""
        self.writer.add_image(record, image_rgb, encoded=encoded)
        self.summary.images += 1
        self.summary.objects += len(record.objects)
        fx = float(record.K[0, 0])
        group = self.camera_groups.setdefault(
            record.camera_group,
            {"width": record.width, "height": record.height, "fx_range": [fx, fx]},
        )
        group["fx_range"] = [min(group["fx_range"][0], fx), max(group["fx_range"][1], fx)]

    def add_query(self, query: QueryRecord) -> None:
        """Write one query; its image must have been added before."""
        self.writer.add_query(query)
        self.summary.add_query(query.split)


def decode_rgb(data: bytes, path: Path) -> np.ndarray:
    """Decode picture bytes to (H, W, 3) uint8 RGB.

    Raises:
        DataFormatError: naming `path` when OpenCV cannot decode the bytes.
    """
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise DataFormatError(f"{path}: OpenCV cannot decode this picture")
    return np.ascontiguousarray(decoded[:, :, ::-1])


# ---------------------------------------------------------------------------------------------
# Options and CLI flags every converter has
# ---------------------------------------------------------------------------------------------


def check_split_option(split: str) -> None:
    """Refuse a split option that is neither "" (taken from the source) nor one of SPLITS.

    Raises:
        InvalidInputError: naming the valid splits.
    """
    if split not in ("", *SPLITS):
        raise InvalidInputError(f"split must be one of {list(SPLITS)} or '', got {split!r}")


def add_skip_missing_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """Add --skip-missing-images: leave out images whose `what` ("file") is missing."""
    parser.add_argument(
        "--skip-missing-images",
        action="store_true",
        help=f"leave out images whose {what} is missing instead of failing",
    )


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """Add --overwrite and --no-progress, the last flags of every converter."""
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
