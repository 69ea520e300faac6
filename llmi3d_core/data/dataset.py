"""Torch Dataset of grounding queries: model inputs and LLMI3D targets for one query per item.

    ds = GroundingDataset("data/synth", "train", hr_size=(384, 512), lr_size=224)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_grounding)

An item is one query of the split (format.select_queries grammar: "train", "test:novel",
"train@source", ...) with the whole image resized for both branches (aspect not kept; K stays
the ORIGINAL image's) and the targets of the paper's heads:

    center_uv      projected 3D centre / (W, H)
    virtual_depth  Z_v = (f_v / f_x) (W / w_v) Z          (geometry.real_to_virtual_depth, eq. 17)
    dims_lwh       (L, W, H) m
    rot6d_allo     6D of the allocentric rotation       (geometry.egocentric_to_allocentric)
    box2d          tight 2D box / (W, H, W, H)
    depth_map      object-level pseudo depth: every object's tight 2D box painted with its
                   virtual depth on a (H_hr / stride, W_hr / stride) grid, nearer over farther,
                   0 = background (section III-B)

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

from llmi3d_core.data.format import (
    QUERY_TYPES,
    ImageRecord,
    ObjectRecord,
    QueryRecord,
    read_dataset,
    select_queries,
)
from llmi3d_core.errors import DataFormatError, InvalidInputError
from llmi3d_core.geometry import (
    VirtualCamera,
    egocentric_to_allocentric,
    matrix_to_rotation_6d,
    real_to_virtual_depth,
)

_MIRROR = np.diag([-1.0, 1.0, 1.0])
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


@dataclass
class _View:
    """Image-dependent quantities of one sample, after the optional mirror."""

    rgb: np.ndarray  # (H, W, 3) uint8
    K: np.ndarray  # (3, 3)
    objects: list[ObjectRecord]
    text: str
    box_prompt: np.ndarray | None
    point_prompt: np.ndarray | None


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


def object_depth_map(
    objects: Sequence[ObjectRecord],
    virtual_depths: Sequence[float],
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
) -> np.ndarray:
    """Paint each object's tight 2D box with its virtual depth, nearer over farther.

    Args:
        objects: the image's objects.
        virtual_depths: their virtual depths (same order).
        image_size: (W, H) of the original image, px.
        grid_size: (h, w) of the map.

    Returns:
        (h, w) float32, 0 where no box covers a cell. A box covers every cell it touches.
    """
    width, height = image_size
    rows, cols = grid_size
    out = np.zeros((rows, cols), dtype=np.float32)
    for index in np.argsort(-np.asarray(virtual_depths), kind="stable"):  # farthest first
        x1, y1, x2, y2 = objects[int(index)].bbox2D_tight
        c0 = int(np.clip(np.floor(x1 / width * cols), 0, cols - 1))
        r0 = int(np.clip(np.floor(y1 / height * rows), 0, rows - 1))
        c1 = int(np.clip(np.ceil(x2 / width * cols), c0 + 1, cols))
        r1 = int(np.clip(np.ceil(y2 / height * rows), r0 + 1, rows))
        out[r0:r1, c0:c1] = virtual_depths[int(index)]
    return out


def _load_rgb(path: Path, record: ImageRecord) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataFormatError(f"{path}: missing or not a readable image (image {record.image_id})")
    if bgr.shape[:2] != (record.height, record.width):
        raise DataFormatError(
            f"{path}: picture is {bgr.shape[1]}x{bgr.shape[0]} but images.jsonl says "
            f"{record.width}x{record.height} (image {record.image_id})"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _to_chw(rgb: np.ndarray, size_wh: tuple[int, int]) -> torch.Tensor:
    """Resize (H, W, 3) uint8 to size_wh and return (3, h, w) float32 in [0, 1]."""
    resized = cv2.resize(rgb, size_wh, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float().div_(255.0)


def _f32(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


class GroundingDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """One item per query of a split; see the module docstring for the keys.

    Args:
        root: dataset directory (docs/dataset_format.md).
        split: split spec, e.g. "train", "val", "test:novel", "train@source".
        hr_size: (H, W) of the high-resolution input; both multiples of depth_stride.
        lr_size: side S of the square low-resolution input.
        depth_stride: the depth map is (H / stride, W / stride).
        virtual: the virtual camera of the virtual depth.
        query_types: keep only these query types (None: all).
        augment: random mirror and brightness jitter (torch's RNG, so DataLoader seeds it).

    Raises:
        InvalidInputError: bad sizes, unknown query types or split spec.
        DataFormatError: a malformed dataset (file and line named).
    """

    def __init__(  # noqa: PLR0917 (the shared contract lists these positionally)
        self,
        root: str | Path,
        split: str,
        hr_size: tuple[int, int] = (384, 512),
        lr_size: int = 224,
        depth_stride: int = 8,
        virtual: VirtualCamera | None = None,
        query_types: Sequence[str] | None = None,
        augment: bool = False,
    ) -> None:
        hr_h, hr_w = (int(v) for v in hr_size)
        if depth_stride < 1 or hr_h % depth_stride or hr_w % depth_stride or min(hr_h, hr_w) < 1:
            raise InvalidInputError(
                f"hr_size {tuple(hr_size)} must be positive multiples of depth_stride "
                f"{depth_stride}"
            )
        if lr_size < 1:
            raise InvalidInputError(f"lr_size must be >= 1, got {lr_size}")
        if query_types is not None:
            unknown = sorted(set(query_types) - set(QUERY_TYPES))
            if unknown:
                raise InvalidInputError(
                    f"query_types {unknown} unknown; allowed: {list(QUERY_TYPES)}"
                )
        self.dataset = read_dataset(root)
        queries = select_queries(self.dataset, split)
        if query_types is not None:
            queries = [q for q in queries if q.type in set(query_types)]
        self.queries: list[QueryRecord] = queries
        self.split = split
        self.hr_size = (hr_h, hr_w)
        self.lr_size = int(lr_size)
        self.depth_stride = int(depth_stride)
        self.virtual = virtual or VirtualCamera()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.augment:
            mirror = bool(torch.rand(()) < 0.5)
            brightness = float(1.0 + 0.3 * (torch.rand(()) - 0.5))
            return self.get(index, mirror=mirror, brightness=brightness)
        return self.get(index)

    def _view(self, query: QueryRecord, record: ImageRecord, mirror: bool) -> _View:
        rgb = _load_rgb(self.dataset.root / record.file_name, record)
        box = None if query.box_prompt is None else np.asarray(query.box_prompt, dtype=float)
        point = None if query.point_prompt is None else np.asarray(query.point_prompt, dtype=float)
        if not mirror:
            return _View(rgb, record.K, record.objects, query.text, box, point)
        width = record.width
        K = record.K.copy()
        K[0, 2] = width - 1 - K[0, 2]
        K[0, 1] = -K[0, 1]
        return _View(
            rgb=np.ascontiguousarray(rgb[:, ::-1]),
            K=K,
            objects=[mirror_object(o, width) for o in record.objects],
            text=mirror_text(query.text),
            box_prompt=None if box is None else _mirror_box(box, width),
            point_prompt=None if point is None else np.array([width - 1 - point[0], point[1]]),
        )

    def get(self, index: int, *, mirror: bool = False, brightness: float = 1.0) -> dict[str, Any]:
        """Build item `index`, optionally mirrored left-right and with a brightness factor."""
        query = self.queries[index]
        record = self.dataset.image(query.image_id)
        view = self._view(query, record, mirror)
        rgb = view.rgb
        if brightness != 1.0:
            rgb = cv2.convertScaleAbs(rgb, alpha=brightness)
        width, height = record.width, record.height
        size = np.array([width, height], dtype=np.float64)
        K = view.K
        fx = float(K[0, 0])
        by_id = {o.object_id: o for o in view.objects}
        target = by_id[query.target_object_id]

        depths = [
            float(real_to_virtual_depth(
                float(o.center_cam[2]), fx, float(width),
                self.virtual.focal_px, self.virtual.width_px,
            ))
            for o in view.objects
        ]  # fmt: skip
        hr_h, hr_w = self.hr_size
        grid = (hr_h // self.depth_stride, hr_w // self.depth_stride)
        depth_map = object_depth_map(view.objects, depths, (width, height), grid)
        u, v = (float(c) for c in target.center_2D)
        R_allo = egocentric_to_allocentric(target.R_cam, u, v, K)
        nan4, nan2 = np.full(4, np.nan), np.full(2, np.nan)
        return {
            "image_hr": _to_chw(rgb, (hr_w, hr_h)),
            "image_lr": _to_chw(rgb, (self.lr_size, self.lr_size)),
            "K": _f32(K),
            "image_size": _f32(size),
            "query": view.text,
            "answer": query.answer,
            "query_type": query.type,
            "query_id": query.query_id,
            "novel_category": query.novel_category,
            "camera_group": query.camera_group,
            "box_prompt": _f32(
                nan4 if view.box_prompt is None else view.box_prompt / np.tile(size, 2)
            ),
            "point_prompt": _f32(nan2 if view.point_prompt is None else view.point_prompt / size),
            "center_uv": _f32(target.center_2D / size),
            "virtual_depth": _f32([depths[view.objects.index(target)]]),
            "dims_lwh": _f32(target.dims_lwh),
            "rot6d_allo": _f32(matrix_to_rotation_6d(R_allo)),
            "box2d": _f32(target.bbox2D_tight / np.tile(size, 2)),
            "depth_map": torch.from_numpy(depth_map)[None],
            "center_cam": _f32(target.center_cam),
            "R_cam": _f32(target.R_cam),
        }


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
