"""Camera and box geometry of LLMI3D (paper section III-D): depth, projection and 3D boxes.

Conventions (DESIGN.md):

* Camera frame: REP 103 optical frame, +x right, +y down, +z forward, metres.
* Intrinsics ``K`` = [[f_x, s, c_x], [0, f_y, c_y], [0, 0, 1]] in pixels; ``s`` (skew) is honoured.
* Boxes: centre (X, Y, Z), dimensions ``dims_lwh`` = (L, W, H) in metres and a rotation ``R`` that
  maps box-local coordinates to the camera frame. Box-local extents follow Omni3D: x = +-L/2,
  y = +-H/2, z = +-W/2 (Omni3D JSON stores dimensions as [W, H, L]; see `Box3D.from_omni3d`).

Rotation representations live in `llmi3d_core.rotation` and box overlap in `llmi3d_core.iou`.
Every function takes numpy arrays or torch tensors and validates its input as described in
`llmi3d_core.arrays`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from llmi3d_core.arrays import (
    ArrayLike,
    ArrayT,
    FloatArray,
    Ops,
    check_finite,
    check_last_dims,
    check_positive,
    finish_like,
    ops_for,
)
from llmi3d_core.errors import InvalidInputError

__all__ = [
    "Box3D",
    "VirtualCamera",
    "backproject",
    "box3d_corners",
    "centre_segment",
    "combined_depth",
    "fuse_log_depths",
    "height_depth",
    "keypoint_height_depth",
    "project",
    "real_to_virtual_depth",
    "split_intrinsics",
    "virtual_to_real_depth",
]


@dataclass(frozen=True)
class VirtualCamera:
    """The virtual camera of LLMI3D's virtual depth (eq. 17-18), width-based.

    Every module takes its default f_v and w_v from here, so that the data targets, the model's
    decoding and the evaluation all use the same constants.

    Attributes:
        focal_px: virtual focal length f_v in pixels.
        width_px: virtual image width w_v in pixels.
    """

    focal_px: float = 512.0
    width_px: float = 448.0

    def __post_init__(self) -> None:
        for name in ("focal_px", "width_px"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidInputError(
                    f"VirtualCamera.{name} must be a finite number > 0, got {value!r}"
                )

    def to_virtual(self, z: ArrayT, fx: ArrayLike, width: ArrayLike) -> ArrayT:
        """Real depth (m) -> virtual depth with this camera; see `real_to_virtual_depth`."""
        return real_to_virtual_depth(z, fx, width, self.focal_px, self.width_px)

    def to_real(self, zv: ArrayT, fx: ArrayLike, width: ArrayLike) -> ArrayT:
        """Virtual depth -> real depth (m) with this camera; see `virtual_to_real_depth`."""
        return virtual_to_real_depth(zv, fx, width, self.focal_px, self.width_px)


_DEFAULT_VIRTUAL = VirtualCamera()


def split_intrinsics(ops: Ops, K: Any, validate: bool) -> tuple[Any, Any, Any, Any, Any]:
    """(f_x, f_y, c_x, c_y, skew), each of shape (...) from K (..., 3, 3)."""
    K = ops.asarray(K)
    if validate:
        check_last_dims("K", K, (3, 3))
        check_finite("K", K)
        check_positive("K[..., 0, 0] (f_x)", K[..., 0, 0], "focal length in pixels")
        check_positive("K[..., 1, 1] (f_y)", K[..., 1, 1], "focal length in pixels")
    return K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 0, 1]


# --------------------------------------------------------------------------------------------
# Depth (eq. 17-20)
# --------------------------------------------------------------------------------------------


def real_to_virtual_depth(
    z: ArrayT,
    fx: ArrayLike,
    width: ArrayLike,
    f_virtual: ArrayLike = _DEFAULT_VIRTUAL.focal_px,
    w_virtual: ArrayLike = _DEFAULT_VIRTUAL.width_px,
    *,
    validate: bool = True,
) -> ArrayT:
    """Metric depth -> virtual depth, width-based (LLMI3D eq. 17).

    ``Z_v = (f_v / f_x) * (w / w_v) * Z``: the depth the object would have if the image were
    resized to width w_v and taken with focal length f_v, which removes the camera's focal length
    from what the network has to learn. Example: f_x = 721.5, w = 1242, f_v = 512, w_v = 448,
    Z = 20 m gives Z_v = 39.35.

    Args:
        z: metric depth Z in metres, any shape (...).
        fx: focal length f_x in pixels of the real image; broadcasts with ``z``.
        width: real image width w in pixels; broadcasts with ``z``.
        f_virtual: virtual focal length f_v in pixels (default `VirtualCamera`).
        w_virtual: virtual image width w_v in pixels (default `VirtualCamera`).
        validate: check that all values are finite and > 0 (see `llmi3d_core.arrays`).

    Returns:
        Virtual depth Z_v, shape (...), same kind as ``z``.

    Raises:
        InvalidInputError: a non-finite value, or a depth, focal length or width <= 0.
    """
    ops = ops_for(z, fx, width, f_virtual, w_virtual)
    args = {"z": z, "fx": fx, "width": width, "f_virtual": f_virtual, "w_virtual": w_virtual}
    zz, fxx, ww, fv, wv = (ops.asarray(v) for v in args.values())
    if validate:
        for name, value in zip(args, (zz, fxx, ww, fv, wv), strict=True):
            check_positive(
                name, value, "depth must be in front of the camera" if name == "z" else ""
            )
    return finish_like(zz * (fv / fxx) * (ww / wv), z)  # type: ignore[no-any-return]


def virtual_to_real_depth(
    zv: ArrayT,
    fx: ArrayLike,
    width: ArrayLike,
    f_virtual: ArrayLike = _DEFAULT_VIRTUAL.focal_px,
    w_virtual: ArrayLike = _DEFAULT_VIRTUAL.width_px,
    *,
    validate: bool = True,
) -> ArrayT:
    """Virtual depth -> metric depth, the inverse of `real_to_virtual_depth` (LLMI3D eq. 18).

    ``Z1 = Z_v * (f_x / f_v) * (w_v / w)``.

    Args:
        zv: virtual depth Z_v, any shape (...).
        fx: focal length f_x in pixels of the real image; broadcasts with ``zv``.
        width: real image width w in pixels; broadcasts with ``zv``.
        f_virtual: virtual focal length f_v in pixels (default `VirtualCamera`).
        w_virtual: virtual image width w_v in pixels (default `VirtualCamera`).
        validate: check that all values are finite and > 0.

    Returns:
        Metric depth Z1 in metres, shape (...), same kind as ``zv``.

    Raises:
        InvalidInputError: a non-finite value, or a depth, focal length or width <= 0.
    """
    ops = ops_for(zv, fx, width, f_virtual, w_virtual)
    args = {"zv": zv, "fx": fx, "width": width, "f_virtual": f_virtual, "w_virtual": w_virtual}
    zz, fxx, ww, fv, wv = (ops.asarray(v) for v in args.values())
    if validate:
        for name, value in zip(args, (zz, fxx, ww, fv, wv), strict=True):
            check_positive(
                name, value, "depth must be in front of the camera" if name == "zv" else ""
            )
    return finish_like(zz * (fxx / fv) * (wv / ww), zv)  # type: ignore[no-any-return]


def height_depth(H: ArrayT, h: ArrayLike, fy: ArrayLike, *, validate: bool = True) -> ArrayT:
    """Depth from the object's metric height and its pixel height (LLMI3D eq. 19).

    ``Z2 = f_y * H / h`` (pinhole similar triangles; exact for an upright object seen face-on).

    Args:
        H: metric 3D height of the object in metres, any shape (...).
        h: height of the object's 2D box in pixels of the same image; broadcasts with ``H``.
        fy: focal length f_y in pixels; broadcasts with ``H``.
        validate: check that all values are finite and > 0.

    Returns:
        Depth Z2 in metres, shape (...), same kind as ``H``.

    Raises:
        InvalidInputError: a non-finite value, or a height or focal length <= 0.
    """
    ops = ops_for(H, h, fy)
    HH, hh, ff = ops.asarray(H), ops.asarray(h), ops.asarray(fy)
    if validate:
        check_positive("H", HH, "metric object height")
        check_positive("h", hh, "2D box height in pixels")
        check_positive("fy", ff, "focal length in pixels")
    return finish_like(ff * HH / hh, H)  # type: ignore[no-any-return]


def combined_depth(
    z_virtual_based: ArrayT, z_height_based: ArrayLike, *, validate: bool = True
) -> ArrayT:
    """The final depth of LLMI3D eq. 20: the mean of the two depth estimates.

    Args:
        z_virtual_based: Z1 from `virtual_to_real_depth`, metres, shape (...).
        z_height_based: Z2 from `height_depth`, metres; broadcasts with the first argument.
        validate: check that both are finite and > 0.

    Returns:
        ``(Z1 + Z2) / 2`` in metres, same kind as ``z_virtual_based``.

    Raises:
        InvalidInputError: a non-finite depth or one <= 0.
    """
    ops = ops_for(z_virtual_based, z_height_based)
    z1, z2 = ops.asarray(z_virtual_based), ops.asarray(z_height_based)
    if validate:
        check_positive("z_virtual_based", z1, "depth must be in front of the camera")
        check_positive("z_height_based", z2, "depth must be in front of the camera")
    return finish_like((z1 + z2) / 2, z_virtual_based)  # type: ignore[no-any-return]


def centre_segment(
    center: ArrayLike, dims_lwh: ArrayLike, R: ArrayLike, *, validate: bool = True
) -> tuple[Any, Any]:
    """End points of a box's vertical centre segment: the top and bottom face centres.

    ``top = C - (H/2) d`` and ``bottom = C + (H/2) d`` with ``d = R[:, 1]``, the box's own y
    axis in the camera frame (box-local y = +-H/2, pointing down for an upright object, since the
    optical frame's y points down). Their projections are the two vertical keypoints whose
    image distance gives the height depth (`keypoint_height_depth`).

    Args:
        center: (..., 3) box centres, metres.
        dims_lwh: (..., 3) (L, W, H), metres.
        R: (..., 3, 3) box-local -> camera rotations.
        validate: check shapes and finiteness.

    Returns:
        (top, bottom), each (..., 3) in metres.
    """
    ops = ops_for(center, dims_lwh, R)
    c, dims, m = ops.asarray(center), ops.asarray(dims_lwh), ops.asarray(R)
    if validate:
        check_last_dims("center", c, (3,))
        check_last_dims("dims_lwh", dims, (3,))
        check_last_dims("R", m, (3, 3))
        for name, value in (("center", c), ("dims_lwh", dims), ("R", m)):
            check_finite(name, value)
    half = 0.5 * dims[..., 2:3] * m[..., :, 1]  # (..., 3)
    return c - half, c + half


def keypoint_height_depth(
    h: ArrayT, H: ArrayLike, v: ArrayLike, R: ArrayLike, K: ArrayLike, *, validate: bool = True
) -> ArrayT:
    """Depth from the projected height of the box's centre segment (exact; our eq. 19).

    Eq. 19's ``Z2 = f_y H / h`` holds only for a segment facing the camera; with the tight 2D
    box as h it is off by ~9 % on our scenes. Instead h is the image distance between the
    projections of the top and bottom face centres (`centre_segment`). With C = Z (x_n, y_n, 1)
    the centre, a = H/2, d = R[:, 1] and ``k = d_y - y_n d_z``, the two projections are
    ``Delta = h / f_y = 2 a Z k / (Z^2 - a^2 d_z^2)`` apart; solving for Z:

        Z = a (|k| + sqrt(k^2 + Delta^2 d_z^2)) / |Delta|

    which is ``f_y H / h`` for an upright box on the optical axis (k = 1, d_z = 0). Exact for
    any pitch or roll, so the oracle decoding test reaches IoU 1 with it.

    Args:
        h: (...) v_bottom - v_top in pixels (> 0).
        H: (...) metric box height in metres (> 0).
        v: (...) row of the projected box centre in pixels.
        R: (..., 3, 3) egocentric rotation of the box.
        K: intrinsics (3, 3) or (..., 3, 3); the skew does not enter (rows only depend on f_y).
        validate: check finiteness and positivity.

    Returns:
        Depth Z of the box centre in metres, shape (...), same kind as ``h``.

    Raises:
        InvalidInputError: a non-finite value, or h, H or f_y <= 0.
    """
    ops = ops_for(h, H, v, R, K)
    hh, HH, vv, m = ops.asarray(h), ops.asarray(H), ops.asarray(v), ops.asarray(R)
    if validate:
        check_positive("h", hh, "projected height of the centre segment in pixels")
        check_positive("H", HH, "metric object height")
        check_finite("v", vv)
        check_last_dims("R", m, (3, 3))
        check_finite("R", m)
    _, fy, _, cy, _ = split_intrinsics(ops, K, validate)
    y_n = (vv - cy) / fy
    d_y, d_z = m[..., 1, 1], m[..., 2, 1]
    k = ops.abs(d_y - y_n * d_z)
    delta = ops.abs(hh / fy)
    z = 0.5 * HH * (k + ops.sqrt(k * k + delta * delta * d_z * d_z)) / delta
    return finish_like(z, h)  # type: ignore[no-any-return]


def fuse_log_depths(log_z: ArrayT, log_scale: ArrayLike, *, validate: bool = True) -> ArrayT:
    """Uncertainty-weighted fusion of several log-depth estimates (MonoFlex-style).

    Each estimate i comes with the log of its Laplacian scale b_i (a head output trained with
    the Laplacian negative log-likelihood); the fused log-depth is the mean weighted by 1 / b_i:

        log Z = sum_i (log Z_i / b_i) / sum_i (1 / b_i)

    so an estimate whose scale goes to infinity drops out, and equal scales give the plain mean
    of the logs (the geometric mean of the depths).

    Args:
        log_z: (..., n) log-depths of n estimates.
        log_scale: (..., n) their log Laplacian scales; broadcasts with ``log_z``.
        validate: check finiteness.

    Returns:
        (...) fused log-depth, same kind as ``log_z``.
    """
    ops = ops_for(log_z, log_scale)
    lz, ls = ops.asarray(log_z), ops.asarray(log_scale)
    if validate:
        check_finite("log_z", lz)
        check_finite("log_scale", ls)
    if ops.is_torch:
        weights = torch.softmax(-ls.expand_as(lz), dim=-1)  # 1/b_i normalised, overflow-safe
    else:
        shifted = -(ls + np.zeros_like(lz))
        weights = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return finish_like((weights * lz).sum(-1), log_z)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# Pinhole projection (eq. 21)
# --------------------------------------------------------------------------------------------


def backproject(
    u: ArrayLike, v: ArrayLike, z: ArrayLike, K: ArrayLike, *, validate: bool = True
) -> Any:
    """Pixel (u, v) at depth Z -> 3D point in the camera optical frame (LLMI3D eq. 21).

    ``Y = Z (v - c_y) / f_y``, ``X = Z (u - c_x - s Y/Z) / f_x`` (the paper's formula when the
    skew s is 0).

    Args:
        u: column in pixels, shape (...).
        v: row in pixels, shape (...).
        z: depth Z in metres (> 0), shape (...).
        K: intrinsics, (3, 3) or (..., 3, 3); broadcasts with the others.
        validate: check finiteness, positive focal lengths and Z > 0.

    Returns:
        Points (..., 3) [X, Y, Z] in metres, numpy float64 or a tensor when any input is one.

    Raises:
        InvalidInputError: bad K, non-finite u or v, or Z <= 0 (point behind the camera).
    """
    ops = ops_for(u, v, z, K)
    uu, vv, zz = ops.asarray(u), ops.asarray(v), ops.asarray(z)
    if validate:
        check_finite("u", uu)
        check_finite("v", vv)
        check_positive("z", zz, "a point must be in front of the camera")
    fx, fy, cx, cy, skew = split_intrinsics(ops, K, validate)
    y_n = (vv - cy) / fy  # (...)
    x_n = (uu - cx - skew * y_n) / fx  # (...)
    return ops.stack([x_n * zz, y_n * zz, zz + 0 * x_n], axis=-1)  # (..., 3)


def project(points: ArrayLike, K: ArrayLike, *, validate: bool = True) -> Any:
    """3D points in the camera optical frame -> pixels (u, v); the inverse of `backproject`.

    Args:
        points: (..., 3) [X, Y, Z] in metres, Z > 0.
        K: intrinsics, (3, 3) or (..., 3, 3).
        validate: check finiteness, positive focal lengths and Z > 0.

    Returns:
        Pixels (..., 2) [u, v], numpy float64 or a tensor when any input is one.

    Raises:
        InvalidInputError: wrong shape, bad K, or a point with Z <= 0 (behind the camera).
    """
    ops = ops_for(points, K)
    pts = ops.asarray(points)
    if validate:
        check_last_dims("points", pts, (3,))
        check_finite("points", pts)
        check_positive("points[..., 2] (Z)", pts[..., 2], "a point must be in front of the camera")
    fx, fy, cx, cy, skew = split_intrinsics(ops, K, validate)
    x_n = pts[..., 0] / pts[..., 2]  # (...)
    y_n = pts[..., 1] / pts[..., 2]  # (...)
    return ops.stack([fx * x_n + skew * y_n + cx, fy * y_n + cy], axis=-1)  # (..., 2)


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------

# Signs of the 8 corners in box-local coordinates (x ~ L, y ~ H, z ~ W), Omni3D order.
_CORNER_SIGNS = np.array(
    [
        [-1, -1, -1],
        [+1, -1, -1],
        [+1, +1, -1],
        [-1, +1, -1],
        [-1, -1, +1],
        [+1, -1, +1],
        [+1, +1, +1],
        [-1, +1, +1],
    ],
    dtype=np.float64,
)


def box3d_corners(
    center: ArrayLike, dims_lwh: ArrayLike, R: ArrayLike, *, validate: bool = True
) -> Any:
    """The 8 corners of oriented 3D boxes, in Omni3D's corner order.

    Box-local coordinates: x = +-L/2, y = +-H/2, z = +-W/2; corner = R @ local + center.
    Corner order (as Omni3D's ``get_cuboid_verts_faces``; y points down in the camera frame, so
    the top face of the drawing is local -y)::

                    v4_____________________v5
                    /|                    /|
                   / |                   / |        local axes:
                  /  |                  /  |           x (L) ->  v0 -> v1
                 /___|_________________/   |           y (H) ->  v1 -> v2 (down)
              v0|    |                 |v1 |           z (W) ->  v0 -> v4 (away)
                |    |                 |   |
                |    |                 |   |        v0 (-,-,-)  v1 (+,-,-)
                |    |                 |   |        v2 (+,+,-)  v3 (-,+,-)
                |    |_________________|___|        v4 (-,-,+)  v5 (+,-,+)
                |   / v7               |   /v6      v6 (+,+,+)  v7 (-,+,+)
                |  /                   |  /
                | /                    | /
                |/_____________________|/
                v3                     v2

    Args:
        center: (..., 3) box centre in metres (camera frame).
        dims_lwh: (..., 3) (L, W, H) in metres, all > 0.
        R: (..., 3, 3) rotation box-local -> camera.
        validate: check shapes, finiteness and positive sizes.

    Returns:
        (..., 8, 3) corners in metres; numpy float64 or a tensor when any input is one.

    Raises:
        InvalidInputError: wrong shape, non-finite values or a size <= 0.
    """
    ops = ops_for(center, dims_lwh, R)
    c, d, m = ops.asarray(center), ops.asarray(dims_lwh), ops.asarray(R)
    if validate:
        check_last_dims("center", c, (3,))
        check_last_dims("dims_lwh", d, (3,))
        check_last_dims("R", m, (3, 3))
        check_finite("center", c)
        check_positive("dims_lwh", d, "box sizes (L, W, H) in metres")
        check_finite("R", m)
    half = ops.stack([d[..., 0], d[..., 2], d[..., 1]], axis=-1) / 2  # (..., 3) along x, y, z
    local = ops.asarray(_CORNER_SIGNS) * half[..., None, :]  # (..., 8, 3)
    return local @ ops.transpose(m) + c[..., None, :]  # (..., 8, 3)


@dataclass(frozen=True, eq=False)
class Box3D:
    """One oriented 3D box in the camera optical frame (the unit of `grounding_metrics`).

    Arrays are copied to float64 and checked on construction.

    Attributes:
        center: (3,) box centre [X, Y, Z] in metres.
        dims_lwh: (3,) (L, W, H) in metres, all > 0 (Omni3D's JSON order is [W, H, L]).
        R: (3, 3) rotation box-local -> camera; must be a proper rotation (tolerance 1e-3).
    """

    center: FloatArray
    dims_lwh: FloatArray
    R: FloatArray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        center = _as_float64("center", self.center, (3,))
        dims = _as_float64("dims_lwh", self.dims_lwh, (3,))
        rot = _as_float64("R", self.R, (3, 3))
        check_positive("dims_lwh", dims, "box sizes (L, W, H) in metres")
        ortho_err = float(np.abs(rot.T @ rot - np.eye(3)).max())
        if ortho_err > 1e-3 or np.linalg.det(rot) <= 0:
            raise InvalidInputError(
                "R must be a proper rotation (R^T R = I within 1e-3, det > 0), got "
                f"max|R^T R - I| = {ortho_err:.3g}, det = {np.linalg.det(rot):.3g}"
            )
        for name, value in (("center", center), ("dims_lwh", dims), ("R", rot)):
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @classmethod
    def from_omni3d(
        cls, center_cam: npt.ArrayLike, dimensions_whl: npt.ArrayLike, R_cam: npt.ArrayLike
    ) -> Box3D:
        """Build from Omni3D-style fields: ``dimensions`` is [W, H, L] there."""
        whl = _as_float64("dimensions_whl", dimensions_whl, (3,))
        return cls(np.asarray(center_cam), np.array([whl[2], whl[0], whl[1]]), np.asarray(R_cam))

    def corners(self) -> FloatArray:
        """(8, 3) corners in metres, order of `box3d_corners`."""
        return np.asarray(box3d_corners(self.center, self.dims_lwh, self.R), dtype=np.float64)

    @property
    def volume(self) -> float:
        """Volume in m^3."""
        return float(np.prod(self.dims_lwh))

    def __repr__(self) -> str:
        return (
            f"Box3D(center={np.round(self.center, 4).tolist()}, "
            f"dims_lwh={np.round(self.dims_lwh, 4).tolist()}, R={np.round(self.R, 4).tolist()})"
        )


def _as_float64(name: str, value: Any, shape: tuple[int, ...]) -> FloatArray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{name} must be numeric with shape {shape}: {err}") from None
    if arr.shape != shape:
        raise InvalidInputError(f"{name} must have shape {shape}, got {arr.shape}")
    check_finite(name, arr)
    return arr
