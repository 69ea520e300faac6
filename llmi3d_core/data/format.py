"""The on-disk grounding dataset format (version 1): its file layout and its records.

Every dataset we train or evaluate on (IG3D-Synth, converted Omni3D, Mono3DRefer, frames from a
rosbag2) is written through `writer.DatasetWriter` and read back with `reader.read_dataset`, so
the model never sees a source-specific layout. The full description, with examples, is
docs/dataset_format.md.

    DIR/dataset.json     DatasetInfo: name, format_version, seed, categories, novel_categories,
                         camera_groups, generator
    DIR/images/<id>.png  the pictures (or .jpg), RGB
    DIR/images.jsonl     one ImageRecord a line, with its ObjectRecords (Omni3D-style keys)
    DIR/queries.jsonl    one QueryRecord a line (0, 1 or several target objects)

Frames and units: the camera optical frame (x right, y down, z forward), metres, pixels of the
stored image. `dimensions` are stored in Omni3D order [W, H, L]; `ObjectRecord.dims_lwh` gives
(L, W, H).

The records <-> JSON lines encoding (and its checks) is `codec`; split selection is `splits`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmi3d_core.errors import InvalidInputError

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
IMAGES_JSONL = "images.jsonl"
QUERIES_JSONL = "queries.jsonl"
IMAGES_DIR = "images"

SPLITS = ("train", "val", "test")
QUERY_TYPES = ("caption", "question", "box_prompt", "point_prompt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Optional query key: the targets of a query with 0 or >= 2 of them (absent: [target_object_id]).
TARGETS_KEY = "target_object_ids"


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
