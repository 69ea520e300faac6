"""Torch datasets: model inputs and targets, per image (the detector) and per query (grounding).

    images = ImageDataset("data/synth", "train", config)          # one item per image
    queries = GroundingDataset("data/synth", "train", config)     # one item per query
    loader = torch.utils.data.DataLoader(queries, batch_size=8, collate_fn=collate_grounding)

Every picture is letterboxed into the model's canvas (model/inputs.py), and every pixel target is
in canvas pixels; K is the canvas intrinsics and image_size the canvas (W, H). Image items hold:

    image_hr, image_lr, K, image_size, letterbox (4: s_x, s_y, offset_x, offset_y)
    heatmap (1, h, w)        Gaussian at each object's projected centre cell (detector.py)
    heat_ignore (1, h, w)    cells of objects whose category is held out of training
    assign (h*w,)            index of the object each supervised cell regresses, -1 for none:
                             an object's centre cell and its neighbours inside its box
    obj_* (M, ...)           per object, padded to MAX_OBJECTS (obj_valid says which are real):
                             center_uv, box2d, keypoints (normalised canvas), virtual_depth,
                             center_cam, dims_lwh, rot6d_allo, R_cam, category, color (indices
                             into the config's lists, -1 unknown)

Query items add the query (text, type, answer, prompts normalised to the canvas), its targets
in obj_* (`target_mask`, M bools: none for a negative query, several for "all the chairs"), the
first one's index `target_index` (-1 for a negative), and the first target's own fields without
the obj_ prefix (center_uv, virtual_depth, dims_lwh, rot6d_allo, box2d, keypoints, center_cam,
R_cam; those of object 0, unused, for a negative).

Targets of the paper's heads, for an object with projected centre (u, v) in the canvas:

    center_uv      (u, v) / (W_c, H_c)
    virtual_depth  Z_v = (f_v / f_x') (W_c / w_v) Z      with the canvas f_x' (eq. 17)
    keypoints      rows of the projected top and bottom face centres / H_c
    rot6d_allo     6D of the allocentric rotation         (rotation.egocentric_to_allocentric)

`augment=True` mirrors the image left-right with probability 0.5 (K, boxes, rotation, prompts
and the words "left"/"right" in the text follow) and jitters brightness by up to 15 %.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from llmi3d_core.data.format import QUERY_TYPES, Dataset, ImageRecord, ObjectRecord, QueryRecord
from llmi3d_core.data.images import load_rgb
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.splits import select_queries
from llmi3d_core.data.synth.query_text import RELATION_WORDS
from llmi3d_core.errors import DataFormatError, InvalidInputError
from llmi3d_core.geometry import centre_segment, project, real_to_virtual_depth
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.inputs import prepare_inputs
from llmi3d_core.model.spatial_relations import ANCHORS, relation_index
from llmi3d_core.rotation import egocentric_to_allocentric, matrix_to_rotation_6d

MAX_OBJECTS = 32
# the item keys of what a query's words name (GroundingDataset.named_attributes)
NAMED_KEYS = ("query_category", "query_color", "query_relation", "anchor_category", "anchor_color")
NEIGHBOURS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
_MIRROR = np.diag([-1.0, 1.0, 1.0])
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)
# the words before a relation's anchors, as the synthetic captions write them
_ANCHOR_MARKER = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in (*RELATION_WORDS.values(), "between")) + r")\b"
)


def _mirror_box(box: np.ndarray, width: int) -> np.ndarray:
    """Mirror an [x1, y1, x2, y2] box (pixel centres at integers: x -> W - 1 - x)."""
    return np.array([width - 1 - box[2], box[1], width - 1 - box[0], box[3]])


def mirror_object(obj: ObjectRecord, width: int) -> ObjectRecord:
    """The object as seen in the left-right mirrored image (camera frame x -> -x).

    The rotation becomes F R F with F = diag(-1, 1, 1): a proper rotation whose box (symmetric
    under local x -> -x) is the mirror image of the original box.
    """
    center = obj.center_cam * np.array([-1.0, 1.0, 1.0])
    return ObjectRecord(
        object_id=obj.object_id,
        category_name=obj.category_name,
        attributes=obj.attributes,
        center_cam=center,
        dimensions=obj.dimensions,
        R_cam=_MIRROR @ obj.R_cam @ _MIRROR,
        bbox2D_tight=_mirror_box(obj.bbox2D_tight, width),
        bbox2D_proj=_mirror_box(obj.bbox2D_proj, width),
        bbox3D_cam=obj.bbox3D_cam * np.array([-1.0, 1.0, 1.0]),
        center_2D=np.array([width - 1 - obj.center_2D[0], obj.center_2D[1]]),
        visibility=obj.visibility,
        truncation=obj.truncation,
        extra=obj.extra,
    )


def mirror_text(text: str) -> str:
    """Swap "left" and "right" (keeping capitals) for a mirrored image."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, text)


def _anchor_phrases(text: str) -> list[str]:
    """The words naming a relation's anchors: after RELATION_WORDS or "between" (split at "and").

    "the red chair to the left of the blue table" -> ["the blue table"]; none without a relation.
    """
    found = _ANCHOR_MARKER.search(text.lower())
    if found is None:
        return []
    rest = text.lower()[found.end() :]
    return rest.split(" and ", 1) if found.group(1) == "between" else [rest]


def _f32(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


def heat_sigma(box_w_cells: float, box_h_cells: float) -> float:
    """Standard deviation (cells) of an object's heatmap Gaussian: grows with its 2D size."""
    return max(0.7, 0.08 * float(np.sqrt(max(box_w_cells, 1e-3) * max(box_h_cells, 1e-3))))


@dataclass
class ObjectTargets:
    """Per-object targets of one image in the canvas frame (arrays of length n, n objects)."""

    center_px: np.ndarray  # (n, 2) projected 3D centre
    box_px: np.ndarray  # (n, 4) tight 2D box
    keypoints_px: np.ndarray  # (n, 2) rows of the top and bottom face centres
    virtual_depth: np.ndarray  # (n,)
    center_cam: np.ndarray  # (n, 3)
    dims_lwh: np.ndarray  # (n, 3)
    rot6d_allo: np.ndarray  # (n, 6)
    R_cam: np.ndarray  # (n, 3, 3)
    category: np.ndarray  # (n,) int, -1 unknown
    color: np.ndarray  # (n,) int, -1 unknown
    ignore: np.ndarray  # (n,) bool: category held out of training


def dense_targets(
    targets: ObjectTargets, grid_hw: tuple[int, int], stride: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmap (h, w), ignore mask (h, w) and cell assignment (h*w,) of one image.

    Objects are painted from the farthest to the nearest, so a nearer object owns a cell that two
    claim; every object's centre cell is written after all neighbours (it must stay its own).
    """
    rows, cols = grid_hw
    heat = np.zeros((rows, cols), dtype=np.float32)
    ignore = np.zeros((rows, cols), dtype=bool)
    assign = np.full((rows, cols), -1, dtype=np.int64)
    yy, xx = np.mgrid[0:rows, 0:cols]
    order = np.argsort(-targets.center_cam[:, 2], kind="stable")  # farthest first
    centres: list[tuple[int, int, int]] = []
    for index in order:
        x1, y1, x2, y2 = targets.box_px[index] / stride
        if targets.ignore[index]:
            r0, r1 = int(np.clip(np.floor(y1), 0, rows - 1)), int(np.clip(np.ceil(y2), 1, rows))
            c0, c1 = int(np.clip(np.floor(x1), 0, cols - 1)), int(np.clip(np.ceil(x2), 1, cols))
            ignore[r0:r1, c0:c1] = True
            continue
        cx, cy = targets.center_px[index] / stride
        col, row = int(np.clip(np.floor(cx), 0, cols - 1)), int(np.clip(np.floor(cy), 0, rows - 1))
        sigma = heat_sigma(x2 - x1, y2 - y1)
        gauss = np.exp(-((xx - col) ** 2 + (yy - row) ** 2) / (2 * sigma**2))
        heat = np.maximum(heat, gauss.astype(np.float32))
        for dc, dr in NEIGHBOURS[1:]:
            c, r = col + dc, row + dr
            inside = x1 - 0.5 <= c + 0.5 <= x2 + 0.5 and y1 - 0.5 <= r + 0.5 <= y2 + 0.5
            if 0 <= c < cols and 0 <= r < rows and inside:
                assign[r, c] = index
        centres.append((row, col, int(index)))
    for row, col, index in centres:
        assign[row, col] = index
        ignore[row, col] = False
    return heat, ignore, assign.reshape(-1)


def object_targets(
    objects: Sequence[ObjectRecord],
    *,
    K_canvas: np.ndarray,
    to_canvas: Any,
    canvas_w: float,
    config: ModelConfig,
    novel: frozenset[str],
) -> ObjectTargets:
    """Canvas-frame targets of an image's objects (see the module docstring)."""
    categories = {name: i for i, name in enumerate(config.detector.categories)}
    colors = {name: i for i, name in enumerate(config.detector.colors)}
    virtual = config.virtual_camera
    n = len(objects)
    center = np.zeros((n, 2))
    keypoints = np.zeros((n, 2))
    rot6d = np.zeros((n, 6))
    depth = np.zeros(n)
    for i, obj in enumerate(objects):
        center[i] = project(obj.center_cam, K_canvas)
        top, bottom = centre_segment(obj.center_cam, obj.dims_lwh, obj.R_cam)
        keypoints[i] = [project(top, K_canvas)[1], project(bottom, K_canvas)[1]]
        R_allo = egocentric_to_allocentric(obj.R_cam, center[i, 0], center[i, 1], K_canvas)
        rot6d[i] = matrix_to_rotation_6d(R_allo)
        depth[i] = real_to_virtual_depth(
            float(obj.center_cam[2]), float(K_canvas[0, 0]), canvas_w,
            virtual.focal_px, virtual.width_px,
        )  # fmt: skip
    return ObjectTargets(
        center_px=center,
        box_px=np.array([to_canvas(o.bbox2D_tight) for o in objects]).reshape(n, 4),
        keypoints_px=keypoints,
        virtual_depth=depth,
        center_cam=np.array([o.center_cam for o in objects]).reshape(n, 3),
        dims_lwh=np.array([o.dims_lwh for o in objects]).reshape(n, 3),
        rot6d_allo=rot6d,
        R_cam=np.array([o.R_cam for o in objects]).reshape(n, 3, 3),
        category=np.array([categories.get(o.category_name, -1) for o in objects], dtype=np.int64),
        color=np.array(
            [colors.get(str(o.attributes.get("color", "")), -1) for o in objects], dtype=np.int64
        ),
        ignore=np.array([o.category_name in novel for o in objects], dtype=bool),
    )


def _padded(values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    out = np.full((MAX_OBJECTS, *values.shape[1:]), fill, dtype=values.dtype)
    out[: len(values)] = values[:MAX_OBJECTS]
    return out


class _Base(torch.utils.data.Dataset[dict[str, Any]]):
    """What both datasets share: reading, letterboxing and the per-image targets."""

    def __init__(
        self, root: str | Path, config: ModelConfig, augment: bool, dataset: Dataset | None
    ) -> None:
        canvas_h, canvas_w = config.high_res.image_size
        if canvas_h % 8 or canvas_w % 8:
            raise InvalidInputError(f"high_res.image_size {(canvas_h, canvas_w)} must be / 8")
        self.dataset = dataset if dataset is not None else read_dataset(root)
        self.config = config
        self.augment = augment
        self.stride = 8
        self.grid = (canvas_h // self.stride, canvas_w // self.stride)
        self.novel = frozenset(self.dataset.info.novel_categories)
        # the last image's item: the queries of one image come in a row (the pointer stage
        # caches them image by image), and decoding and letterboxing it is most of their cost
        self._last_image: tuple[tuple[str, bool, float], Any] | None = None

    def _draws(self) -> tuple[bool, float]:
        if not self.augment:
            return False, 1.0
        return bool(torch.rand(()) < 0.5), float(1.0 + 0.3 * (torch.rand(()) - 0.5))

    def image_item(
        self, record: ImageRecord, mirror: bool = False, brightness: float = 1.0
    ) -> tuple[dict[str, Any], Any, list[ObjectRecord]]:
        """The image part of an item (a new dict), its letterbox and its (mirrored) objects."""
        key = (record.image_id, mirror, brightness)
        if self._last_image is None or self._last_image[0] != key:
            self._last_image = (key, self._image_item(record, mirror, brightness))
        item, lb, objects = self._last_image[1]
        return dict(item), lb, objects

    def _image_item(
        self, record: ImageRecord, mirror: bool, brightness: float
    ) -> tuple[dict[str, Any], Any, list[ObjectRecord]]:
        rgb = load_rgb(self.dataset.root / record.file_name, record)
        K, objects = record.K, record.objects
        if mirror:
            width = record.width
            rgb = np.ascontiguousarray(rgb[:, ::-1])
            K = K.copy()
            K[0, 2] = width - 1 - K[0, 2]
            K[0, 1] = -K[0, 1]
            objects = [mirror_object(o, width) for o in objects]
        if brightness != 1.0:
            rgb = cv2.convertScaleAbs(rgb, alpha=brightness)
        inputs = prepare_inputs(rgb, K, self.config)
        lb = inputs.letterbox
        canvas = lb.canvas_size
        targets = object_targets(
            objects,
            K_canvas=inputs.K,
            to_canvas=lb.boxes_to_canvas,
            canvas_w=float(canvas[0]),
            config=self.config,
            novel=self.novel,
        )
        heat, ignore, assign = dense_targets(targets, self.grid, self.stride)
        n = len(objects)
        valid = np.zeros(MAX_OBJECTS, dtype=bool)
        valid[: min(n, MAX_OBJECTS)] = True
        item = {
            "image_hr": inputs.image_hr,
            "image_lr": inputs.image_lr,
            "K": _f32(inputs.K),
            "image_size": _f32(canvas),
            "letterbox": _f32(lb.as_array()),
            "heatmap": torch.from_numpy(heat)[None],
            "heat_ignore": torch.from_numpy(ignore)[None],
            "assign": torch.from_numpy(np.where(assign < MAX_OBJECTS, assign, -1)),
            "obj_valid": torch.from_numpy(valid & ~_padded(targets.ignore, True)),
            "obj_center_uv": _f32(_padded(targets.center_px / canvas)),
            "obj_box2d": _f32(_padded(targets.box_px / np.tile(canvas, 2))),
            "obj_keypoints": _f32(_padded(targets.keypoints_px / canvas[1])),
            "obj_virtual_depth": _f32(_padded(targets.virtual_depth, 1.0)),
            "obj_center_cam": _f32(_padded(targets.center_cam, 1.0)),
            "obj_dims_lwh": _f32(_padded(targets.dims_lwh, 1.0)),
            "obj_rot6d_allo": _f32(_padded(targets.rot6d_allo)),
            "obj_R_cam": _f32(_padded(targets.R_cam)),
            "obj_category": torch.from_numpy(_padded(targets.category, -1)),
            "obj_color": torch.from_numpy(_padded(targets.color, -1)),
        }
        return item, lb, objects


class ImageDataset(_Base):
    """One item per image of a split (the detector stage); see the module docstring.

    Args:
        root: dataset directory (docs/dataset_format.md).
        split: split spec (splits.select_queries grammar); the images its queries ask about.
        config: the model config (canvas and LR sizes, categories, colours, virtual camera).
        augment: random mirror and brightness jitter.
        dataset: an already read dataset (then `root` is not read again).
        mirror: every image mirrored left-right (a deterministic copy of the split, which a
            cache of backbone maps can hold, unlike `augment`'s random draws).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        config: ModelConfig,
        *,
        augment: bool = False,
        dataset: Dataset | None = None,
        mirror: bool = False,
    ) -> None:
        if augment and mirror:
            raise InvalidInputError("ImageDataset: augment and mirror exclude each other")
        super().__init__(root, config, augment, dataset)
        self.mirror = mirror
        wanted = {q.image_id for q in select_queries(self.dataset, split)}
        self.records = [r for r in self.dataset.images if r.image_id in wanted]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        mirror, brightness = self._draws()
        item, _, _ = self.image_item(self.records[index], mirror or self.mirror, brightness)
        item["image_id"] = self.records[index].image_id
        return item


class GroundingDataset(_Base):
    """One item per query of a split; see the module docstring.

    Args:
        root: dataset directory (docs/dataset_format.md).
        split: split spec, e.g. "train", "val", "test:novel", "train@source".
        config: the model config.
        query_types: keep only these query types (None: all).
        augment: random mirror and brightness jitter (torch's RNG, so DataLoader seeds it).
        dataset: an already read dataset.

    Raises:
        InvalidInputError: unknown query types or split spec.
        DataFormatError: a malformed dataset (file and line named).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        config: ModelConfig,
        *,
        query_types: Sequence[str] | None = None,
        augment: bool = False,
        dataset: Dataset | None = None,
    ) -> None:
        if query_types is not None:
            unknown = sorted(set(query_types) - set(QUERY_TYPES))
            if unknown:
                raise InvalidInputError(
                    f"query_types {unknown} unknown; allowed: {list(QUERY_TYPES)}"
                )
        super().__init__(root, config, augment, dataset)
        queries = select_queries(self.dataset, split)
        if query_types is not None:
            queries = [q for q in queries if q.type in set(query_types)]
        self.queries: list[QueryRecord] = queries
        self.split = split

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        mirror, brightness = self._draws()
        return self.get(index, mirror=mirror, brightness=brightness)

    def named_attributes(
        self,
        query: QueryRecord,
        text: str,
        targets: list[ObjectRecord],
        anchors: Sequence[ObjectRecord] = (),
        *,
        mirror: bool = False,
    ) -> dict[str, torch.Tensor]:
        """What the query's words name, as class indices (pointer.py, spatial_relations.py).

        query_category: the answer's category for captions and questions (the last index,
        "any", for prompts, which name none, and for categories outside the head).
        query_color: the first target's colour when its word is in the text, for a negative the
        first colour word of the text; else "any".
        query_relation: the index in RELATIONS of `extra["relation"]` (left and right swapped
        for a mirrored image; "none" for questions and prompts), -1 for a caption whose dataset
        does not record it.
        anchor_category, anchor_color: (ANCHORS,) each anchor's category and its colour when
        the words after the relation name it (else "any"); -1 where there is no such anchor.
        """
        categories = list(self.config.detector.categories)
        colors = list(self.config.detector.colors)
        category = len(categories)
        if query.type in ("caption", "question") and query.answer in categories:
            category = categories.index(query.answer)
        words = set(re.findall(r"[a-z]+", text.lower()))
        color = len(colors)
        if targets:
            own = str(targets[0].attributes.get("color", ""))
            if own in colors and own in words:
                color = colors.index(own)
        else:
            named = [w for w in re.findall(r"[a-z]+", text.lower()) if w in colors]  # text order
            color = colors.index(named[0]) if named else len(colors)
        relation = query.extra.get("relation") if query.type == "caption" else "none"
        anchor_category, anchor_color = [-1] * ANCHORS, [-1] * ANCHORS
        phrases = _anchor_phrases(text)
        for k, (anchor, phrase) in enumerate(zip(anchors[:ANCHORS], phrases, strict=False)):
            if anchor.category_name in categories:
                anchor_category[k] = categories.index(anchor.category_name)
                own = str(anchor.attributes.get("color", ""))
                named_color = own in colors and own in re.findall(r"[a-z]+", phrase)
                anchor_color[k] = colors.index(own) if named_color else len(colors)
        return {
            "query_category": torch.tensor(category),
            "query_color": torch.tensor(color),
            "query_relation": torch.tensor(relation_index(relation, mirror=mirror)),
            "anchor_category": torch.tensor(anchor_category),
            "anchor_color": torch.tensor(anchor_color),
        }

    def get(self, index: int, *, mirror: bool = False, brightness: float = 1.0) -> dict[str, Any]:
        """Build item `index`, optionally mirrored left-right and with a brightness factor."""
        query = self.queries[index]
        record = self.dataset.image(query.image_id)
        item, lb, objects = self.image_item(record, mirror, brightness)
        width = record.width
        box = None if query.box_prompt is None else np.asarray(query.box_prompt, dtype=float)
        point = None if query.point_prompt is None else np.asarray(query.point_prompt, dtype=float)
        text = query.text
        if mirror:
            text = mirror_text(text)
            box = None if box is None else _mirror_box(box, width)
            point = None if point is None else np.array([width - 1 - point[0], point[1]])
        canvas = lb.canvas_size
        ids = [o.object_id for o in objects]
        targets = [ids.index(object_id) for object_id in query.target_object_ids]
        if any(t >= MAX_OBJECTS for t in targets):
            raise DataFormatError(
                f"query {query.query_id}: a target is object {max(targets)} of image "
                f"{record.image_id}; at most {MAX_OBJECTS} objects an image are supported"
            )
        target_mask = torch.zeros(MAX_OBJECTS, dtype=torch.bool)
        target_mask[targets] = True
        target = targets[0] if targets else 0
        nan4, nan2 = np.full(4, np.nan), np.full(2, np.nan)
        anchor_ids = [a for a in query.extra.get("anchor_object_ids", ()) if a in ids]
        item.update(
            query=text,
            answer=query.answer,
            query_type=query.type,
            query_id=query.query_id,
            novel_category=query.novel_category,
            camera_group=query.camera_group,
            box_prompt=_f32(nan4 if box is None else lb.boxes_to_canvas(box) / np.tile(canvas, 2)),
            point_prompt=_f32(nan2 if point is None else lb.points_to_canvas(point) / canvas),
            target_index=torch.tensor(target if targets else -1),
            target_mask=target_mask,
            **self.named_attributes(
                query,
                text,
                [objects[t] for t in targets],
                [objects[ids.index(a)] for a in anchor_ids],
                mirror=mirror,
            ),
        )
        for key in (
            "center_uv", "virtual_depth", "dims_lwh", "rot6d_allo", "box2d", "keypoints",
            "center_cam", "R_cam",
        ):  # fmt: skip
            value = item[f"obj_{key}"][target]
            item[key] = value[None] if key == "virtual_depth" else value
        return item


def collate_grounding(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of items; strings and bools become lists.

    Raises:
        InvalidInputError: for an empty list or items with different keys.
    """
    if not items:
        raise InvalidInputError("collate_grounding needs at least one item")
    keys = list(items[0])
    for item in items[1:]:
        if list(item) != keys:
            raise InvalidInputError(f"items have different keys: {sorted(keys)} vs {sorted(item)}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
