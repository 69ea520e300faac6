"""Overlap of boxes: the exact oriented 3D IoU of the field's evaluation, Mono3DVG's, and 2D IoU.

Evaluation code: float64 numpy, not differentiable; torch inputs are accepted and the result is
given back as a tensor. Boxes are given by their 8 corners in `geometry.box3d_corners` order.
Inputs are validated as described in `llmi3d_core.arrays`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from llmi3d_core.arrays import (
    ArrayLike,
    FloatArray,
    check_finite,
    check_last_dims,
    check_positive,
    describe_bad,
)
from llmi3d_core.errors import InvalidInputError

__all__ = [
    "box2d_area",
    "box2d_iou_matrix",
    "box3d_iou",
    "box3d_iou_batch",
    "box3d_iou_mono3dvg",
    "box3d_volume",
]

# The 6 faces of a box as corner indices (see the drawing in `geometry.box3d_corners`). Their
# winding is fixed at run time so that every face is counter-clockwise seen from outside.
_FACES = np.array(
    [
        [0, 1, 2, 3],  # z = -W/2
        [4, 5, 6, 7],  # z = +W/2
        [0, 1, 5, 4],  # y = -H/2
        [3, 2, 6, 7],  # y = +H/2
        [0, 3, 7, 4],  # x = -L/2
        [1, 2, 6, 5],  # x = +L/2
    ]
)
_COPLANAR_COS = 1.0 - 1e-9  # normals closer than ~4.5e-5 rad count as parallel
_COPLANAR_REL = 1e-7  # plane offsets closer than this times the box scale count as equal
_IOU_CHUNK = 4096  # pairs per vectorised chunk (bounds memory: ~100 MB at most)


def _corners_numpy(name: str, corners: Any) -> FloatArray:
    if isinstance(corners, torch.Tensor):
        corners = corners.detach().cpu().numpy()
    arr = np.asarray(corners, dtype=np.float64)
    check_last_dims(name, arr, (8, 3))
    check_finite(name, arr)
    return arr


def _box_edges(corners: FloatArray) -> FloatArray:
    """Edges c1 - c0, c3 - c0, c4 - c0 of boxes (..., 8, 3) given by corners -> (..., 3, 3)."""
    edges: FloatArray = (
        np.stack([corners[..., 1, :], corners[..., 3, :], corners[..., 4, :]], axis=-2)
        - corners[..., None, 0, :]
    )
    return edges


def _parallelepiped_volume(corners: FloatArray) -> FloatArray:
    """|det(c1 - c0, c3 - c0, c4 - c0)|: the volume of boxes given by their corners (..., 8, 3)."""
    volume: FloatArray = np.abs(np.linalg.det(_box_edges(corners)))
    return volume


def _is_flat(corners: FloatArray, volume: FloatArray) -> npt.NDArray[np.bool_]:
    """Boxes (N, 8, 3) whose volume is within rounding of zero.

    The edges are differences of coordinates as large as M = max |corner|, so each carries an
    absolute rounding error of ~M * eps, and the volume an error of ~M * eps times the sum of the
    faces' areas. A box is flat when its volume is within 1e-12 * max(M, 1) of that area sum
    (eps ~ 2e-16, so ~5000x the rounding). The bound scales with the box's own faces: a 10 cm box
    1 km from the origin is a box (a bound of M^3 alone rejected it).
    """
    lengths = np.linalg.norm(_box_edges(corners), axis=-1)
    areas = (lengths[:, 0] * lengths[:, 1] + lengths[:, 1] * lengths[:, 2]
             + lengths[:, 2] * lengths[:, 0])  # fmt: skip
    scale = np.maximum(np.abs(corners).max(axis=(1, 2)), 1.0)
    flat: npt.NDArray[np.bool_] = volume <= 1e-12 * scale * areas
    return flat


def box3d_volume(corners: ArrayLike) -> FloatArray:
    """Volume (m^3) of boxes given by corners (..., 8, 3) in `geometry.box3d_corners` order."""
    arr = _corners_numpy("corners", corners)
    return _parallelepiped_volume(arr)


def _face_planes(corners: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Boxes (N, 8, 3) -> faces, outward normals and plane offsets.

    Returns polygons (N, 6, 4, 3) wound counter-clockwise seen from outside, unit outward normals
    (N, 6, 3) and offsets (N, 6), so that the inside of face j is ``n_j . x - d_j <= 0``.
    """
    faces = corners[:, _FACES]  # (N, 6, 4, 3)
    normal = np.cross(faces[:, :, 2] - faces[:, :, 0], faces[:, :, 3] - faces[:, :, 1])
    face_center = faces.mean(axis=2)  # (N, 6, 3)
    outward = face_center - corners.mean(axis=1)[:, None, :]  # (N, 6, 3)
    flip = (normal * outward).sum(-1) < 0  # (N, 6)
    normal = np.where(flip[..., None], -normal, normal)
    faces = np.where(flip[..., None, None], faces[:, :, ::-1], faces)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    offset = (normal * face_center).sum(-1)  # (N, 6)
    return faces, normal, offset


def _clip_polygons(
    poly: FloatArray,
    count: npt.NDArray[np.intp],
    normal: FloatArray,
    offset: FloatArray,
    active: npt.NDArray[np.bool_],
) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """One Sutherland-Hodgman step for a batch of convex polygons against one plane each.

    Polygons entirely on the kept side pass unchanged and those entirely outside are emptied;
    only the ones the plane cuts go through `_cut_polygons`. ``poly`` may be modified in place.

    Args:
        poly: (P, K, 3) vertices in order; only the first ``count`` of each row are used.
        count: (P,) vertex counts.
        normal: (P, 3) plane normals; the kept side is ``normal.x - offset <= 0``.
        offset: (P,) plane offsets.
        active: (P,) False where the plane must be ignored (coplanar faces).

    Returns:
        Clipped polygons (P, K', 3), K' >= K, and their counts (P,); winding is preserved.
    """
    P, K, _ = poly.shape
    valid = np.arange(K)[None, :] < count[:, None]  # (P, K)
    dist = np.einsum("pki,pi->pk", poly, normal) - offset[:, None]  # (P, K)
    n_out = (valid & (dist > 0)).sum(axis=1) * active  # (P,) vertices strictly outside
    new_count = np.where(n_out == count, 0, count)
    cut = np.flatnonzero((n_out > 0) & (n_out < count))
    if cut.size == 0:
        return poly, new_count
    sub_poly, sub_count = _cut_polygons(poly[cut], count[cut], dist[cut])
    width = sub_poly.shape[1]
    if width > K:
        poly = np.concatenate([poly, np.zeros((P, width - K, 3))], axis=1)
    poly[cut, :width] = sub_poly
    new_count[cut] = sub_count
    return poly, new_count


def _cut_polygons(
    poly: FloatArray, count: npt.NDArray[np.intp], dist: FloatArray
) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """Keep the part ``dist <= 0`` of convex polygons (P, K, 3) that a plane cuts.

    Each edge i -> i+1 emits its start vertex if kept and the crossing point if its ends lie
    strictly on opposite sides; the emitted points are then packed to the front of each row.
    """
    P, K = dist.shape
    rows = np.arange(P)
    last = count - 1
    poly_next = np.roll(poly, -1, axis=1)  # (P, K, 3): vertex i+1, wrapping at count
    poly_next[rows, last] = poly[:, 0]
    dist_next = np.roll(dist, -1, axis=1)
    dist_next[rows, last] = dist[:, 0]
    valid = np.arange(K)[None, :] < count[:, None]
    keep_cur = valid & (dist <= 0)
    crossing = valid & (((dist < 0) & (dist_next > 0)) | ((dist > 0) & (dist_next < 0)))
    t = np.where(crossing, dist / np.where(crossing, dist - dist_next, 1.0), 0.0)  # (P, K)
    hit = poly + t[..., None] * (poly_next - poly)  # (P, K, 3)
    cand = np.stack([poly, hit], axis=2).reshape(P, 2 * K, 3)  # cur_0, hit_01, cur_1, ...
    keep = np.stack([keep_cur, crossing], axis=2).reshape(P, 2 * K)
    new_count = keep.sum(axis=1)
    width = max(int(new_count.max(initial=0)), 1)
    pos = np.cumsum(keep, axis=1) - 1  # target slot of each kept candidate
    out = np.zeros((P, width, 3))
    out[np.broadcast_to(rows[:, None], keep.shape)[keep], pos[keep]] = cand[keep]
    return out, new_count


def _polygon_volume_terms(poly: FloatArray, count: npt.NDArray[np.intp]) -> FloatArray:
    """Sum over the fan triangles (v0, vi, vi+1) of det(v0, vi, vi+1) / 6, per polygon (P,).

    Summed over a closed, outward-wound surface this is the enclosed volume (divergence theorem).
    """
    P, K, _ = poly.shape
    if K < 3:
        return np.zeros(P)
    valid = np.arange(K)[None, :] < count[:, None]
    v0 = poly[:, :1, :]  # (P, 1, 3)
    filled = np.where(valid[..., None], poly, v0)  # padding repeats v0: zero-volume triangles
    tri = np.einsum("pi,pki->pk", v0[:, 0], np.cross(filled[:, 1:-1], filled[:, 2:]))
    return np.where(count >= 3, tri.sum(axis=1), 0.0) / 6.0


def _intersection_volume(a: FloatArray, b: FloatArray) -> FloatArray:
    """Exact volume of the intersection of boxes a[n] and b[n], corners (N, 8, 3) -> (N,)."""
    N = a.shape[0]
    origin = (a.mean(axis=1) + b.mean(axis=1))[:, None, :] / 2  # better conditioned volume sums
    a, b = a - origin, b - origin
    faces_a, n_a, d_a = _face_planes(a)
    faces_b, n_b, d_b = _face_planes(b)
    scale = np.maximum(np.abs(a).max(axis=(1, 2)), np.abs(b).max(axis=(1, 2)))  # (N,)
    # Coplanar face pairs (N, 6, 6): same direction -> keep A's face only and do not clip it by
    # B's plane; opposite direction -> the boxes only touch there: drop both faces.
    cos = np.einsum("nid,njd->nij", n_a, n_b)
    close = np.abs(d_a[:, :, None] - cos * d_b[:, None, :]) <= _COPLANAR_REL * scale[:, None, None]
    same = (cos >= _COPLANAR_COS) & close
    opposite = (cos <= -_COPLANAR_COS) & close
    # 12 polygons per pair: A's faces clipped by B's 6 planes, then B's faces by A's 6 planes.
    poly = np.concatenate([faces_a, faces_b], axis=1).reshape(N * 12, 4, 3)
    normal = np.concatenate(
        [np.broadcast_to(n_b[:, None], (N, 6, 6, 3)), np.broadcast_to(n_a[:, None], (N, 6, 6, 3))],
        axis=1,
    ).reshape(N * 12, 6, 3)
    offset = np.concatenate(
        [np.broadcast_to(d_b[:, None], (N, 6, 6)), np.broadcast_to(d_a[:, None], (N, 6, 6))],
        axis=1,
    ).reshape(N * 12, 6)
    # active[face, plane]: B's plane j is ignored for A's face i when they coincide (same side).
    active = np.concatenate([~same, np.ones((N, 6, 6), dtype=bool)], axis=1).reshape(N * 12, 6)
    drop_a = opposite.any(axis=2)  # (N, 6)
    drop_b = same.any(axis=1) | opposite.any(axis=1)  # (N, 6)
    keep_face = ~np.concatenate([drop_a, drop_b], axis=1).reshape(N * 12)
    # Pairs whose bounding spheres do not meet cannot intersect: skip their polygons.
    radius_a = np.linalg.norm(a - a.mean(axis=1, keepdims=True), axis=-1).max(axis=1)
    radius_b = np.linalg.norm(b - b.mean(axis=1, keepdims=True), axis=-1).max(axis=1)
    near = np.linalg.norm(a.mean(axis=1) - b.mean(axis=1), axis=-1) < radius_a + radius_b
    owner = np.repeat(np.arange(N), 12)  # pair index of each polygon
    rows = np.flatnonzero(keep_face & near[owner])  # live polygons, indices into the N * 12
    poly = poly[rows]
    count = np.full(rows.size, 4, dtype=np.intp)
    for j in range(6):
        poly, count = _clip_polygons(poly, count, normal[rows, j], offset[rows, j], active[rows, j])
        alive = count >= 3  # fewer vertices enclose no area, and clipping cannot add area
        if not alive.all():
            poly, count, rows = poly[alive], count[alive], rows[alive]
    terms = _polygon_volume_terms(poly, count)
    volume: FloatArray = np.bincount(owner[rows], weights=terms, minlength=N).astype(np.float64)
    return np.maximum(volume, 0.0)


def box3d_iou_batch(corners_a: ArrayLike, corners_b: ArrayLike, *, validate: bool = True) -> Any:
    """Exact IoU of oriented 3D boxes, pair by pair, vectorised over the batch.

    The intersection of two convex boxes is a convex polyhedron whose surface consists of the
    parts of A's faces inside B and of B's faces inside A. Each face (a quad) is clipped by the
    6 half-spaces of the other box (Sutherland-Hodgman, batched in numpy with padded polygons),
    and the volume is the divergence-theorem sum over the clipped faces of det(v0, vi, vi+1)/6.
    Coplanar faces are counted once (same direction) or not at all (opposite: touching boxes).
    Same definition as PyTorch3D's / Omni3D's ``box3d_overlap``; float64 throughout.

    Args:
        corners_a: (N, 8, 3) corners in `geometry.box3d_corners` order (any consistent box corners:
            the faces are taken from that order).
        corners_b: (N, 8, 3) same.
        validate: check shapes, finiteness and positive volumes.

    Returns:
        (N,) IoU in [0, 1]: numpy float64, or a tensor (dtype/device of corners_a) when
        corners_a is one. Not differentiable.

    Raises:
        InvalidInputError: wrong or different shapes, non-finite values, or a box of zero volume.
    """
    a = _corners_numpy("corners_a", corners_a)
    b = _corners_numpy("corners_b", corners_b)
    if a.ndim != 3 or b.shape != a.shape:
        raise InvalidInputError(
            f"corners_a and corners_b must both have shape (N, 8, 3), got {a.shape} and {b.shape}"
        )
    vol_a, vol_b = _parallelepiped_volume(a), _parallelepiped_volume(b)
    if validate:
        for name, vol, arr in (("corners_a", vol_a, a), ("corners_b", vol_b, b)):
            tiny = _is_flat(arr, vol)
            if np.any(tiny):
                raise InvalidInputError(
                    f"{name} must describe boxes with volume > 0, got volume "
                    f"{describe_bad(vol, tiny)} m^3"
                )
    inter = np.zeros(a.shape[0])
    for start in range(0, a.shape[0], _IOU_CHUNK):
        stop = start + _IOU_CHUNK
        inter[start:stop] = _intersection_volume(a[start:stop], b[start:stop])
    inter = np.minimum(inter, np.minimum(vol_a, vol_b))
    union = vol_a + vol_b - inter
    iou = np.clip(inter / np.maximum(union, np.finfo(np.float64).tiny), 0.0, 1.0)
    if isinstance(corners_a, torch.Tensor):
        dtype = corners_a.dtype if corners_a.is_floating_point() else torch.get_default_dtype()
        return torch.as_tensor(iou, dtype=dtype, device=corners_a.device)
    return iou


def box3d_iou(corners_a: ArrayLike, corners_b: ArrayLike, *, validate: bool = True) -> Any:
    """Exact IoU of two oriented 3D boxes (or of broadcast batches of them).

    See `box3d_iou_batch` for the method.

    Args:
        corners_a: (8, 3) or (..., 8, 3) corners in `geometry.box3d_corners` order.
        corners_b: (8, 3) or (..., 8, 3), broadcasting with ``corners_a``.
        validate: check shapes, finiteness and positive volumes.

    Returns:
        A Python float for one pair of (8, 3) numpy inputs, else IoU of shape (...)
        (a tensor when ``corners_a`` is one).

    Raises:
        InvalidInputError: wrong shapes, non-finite values, or a box of zero volume.
    """
    a = _corners_numpy("corners_a", corners_a)
    b = _corners_numpy("corners_b", corners_b)
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise InvalidInputError(
            f"corners_a {a.shape} and corners_b {b.shape} do not broadcast"
        ) from None
    a = np.broadcast_to(a, (*batch, 8, 3)).reshape(-1, 8, 3)
    b = np.broadcast_to(b, (*batch, 8, 3)).reshape(-1, 8, 3)
    iou = np.asarray(box3d_iou_batch(a, b, validate=validate)).reshape(batch)
    if isinstance(corners_a, torch.Tensor):
        dtype = corners_a.dtype if corners_a.is_floating_point() else torch.get_default_dtype()
        return torch.as_tensor(iou, dtype=dtype, device=corners_a.device)
    if batch == ():
        return float(iou)
    return iou


def box3d_iou_mono3dvg(
    center_a: ArrayLike,
    dims_lwh_a: ArrayLike,
    center_b: ArrayLike,
    dims_lwh_b: ArrayLike,
    *,
    validate: bool = True,
) -> Any:
    """Mono3DVG's published 3D IoU, kept ONLY to compare with its tables.

    Mono3DVG (Zhan et al., AAAI 2024, ``lib/helpers/utils_helper.py: calc_iou``) evaluates an
    axis-aligned IoU that ignores the rotation and puts its (h, w, l) sizes on the camera's
    (x, y, z) axes. With our (L, W, H) this is: extents (H, W, L) along (x, y, z) around the box
    centre (their evaluator first moves KITTI's bottom centre up by h/2; our centres are already
    box centres). For a car with its length along z it coincides with nothing physical: never
    report it without saying so.

    Args:
        center_a: (..., 3) box centres in metres.
        dims_lwh_a: (..., 3) (L, W, H) in metres, all > 0.
        center_b: (..., 3), broadcasting with the above.
        dims_lwh_b: (..., 3).
        validate: check shapes, finiteness and positive sizes.

    Returns:
        IoU in [0, 1], shape (...) (a Python float for single boxes given as 1-D numpy arrays or
        lists; a tensor when ``center_a`` is one).

    Raises:
        InvalidInputError: wrong shape, non-finite values or a size <= 0.
    """
    args = {
        "center_a": center_a,
        "dims_lwh_a": dims_lwh_a,
        "center_b": center_b,
        "dims_lwh_b": dims_lwh_b,
    }
    arrs = {}
    for name, value in args.items():
        v = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        arr = np.asarray(v, dtype=np.float64)
        if validate:
            check_last_dims(name, arr, (3,))
            if name.startswith("dims"):
                check_positive(name, arr, "box sizes (L, W, H) in metres")
            else:
                check_finite(name, arr)
        arrs[name] = arr
    ext_a = arrs["dims_lwh_a"][..., [2, 1, 0]]  # (h, w, l) on (x, y, z), as Mono3DVG does
    ext_b = arrs["dims_lwh_b"][..., [2, 1, 0]]
    lo = np.maximum(arrs["center_a"] - ext_a / 2, arrs["center_b"] - ext_b / 2)
    hi = np.minimum(arrs["center_a"] + ext_a / 2, arrs["center_b"] + ext_b / 2)
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    union = np.prod(ext_a, axis=-1) + np.prod(ext_b, axis=-1) - inter
    iou = np.clip(inter / union, 0.0, 1.0)
    if isinstance(center_a, torch.Tensor):
        return torch.as_tensor(iou, dtype=center_a.dtype, device=center_a.device)
    if np.ndim(iou) == 0:
        return float(iou)
    return iou


def _boxes2d(value: npt.ArrayLike, name: str) -> FloatArray:
    """(N, 4) float64 boxes from a (4,) box, (N, 4) boxes or an empty sequence."""
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.shape[-1:] != (4,) or array.ndim > 2 or not np.isfinite(array).all():
        raise InvalidInputError(
            f"{name} must be finite [x1, y1, x2, y2] boxes of shape (4,) or (N, 4), got "
            f"shape {array.shape}"
        )
    return array.reshape(-1, 4)


def _areas(boxes: FloatArray) -> FloatArray:
    """Areas (N,) of boxes (N, 4) [x1, y1, x2, y2]; 0 for an empty box."""
    out: FloatArray = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    return out


def box2d_area(box: npt.ArrayLike) -> float:
    """Area of one [x1, y1, x2, y2] box in px^2 (0 for an empty box)."""
    return float(_areas(np.asarray(box, dtype=np.float64).reshape(1, 4))[0])


def box2d_iou_matrix(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatArray:
    """IoU of every pair of axis-aligned 2D boxes.

    Args:
        boxes_a: (N, 4) [x1, y1, x2, y2] px.
        boxes_b: (M, 4) [x1, y1, x2, y2] px.

    Returns:
        (N, M) IoU in [0, 1]; 0 where a union is empty.

    Raises:
        InvalidInputError: wrong shapes or non-finite values.
    """
    a, b = _boxes2d(boxes_a, "boxes_a"), _boxes2d(boxes_b, "boxes_b")
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])  # (N, M)
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)  # (N, M)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter  # (N, M)
    out: FloatArray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out
