"""Camera and box geometry of LLMI3D (paper section III-D) and of the field's 3D evaluation.

Conventions (DESIGN.md):

* Camera frame: REP 103 optical frame, +x right, +y down, +z forward, metres.
* Intrinsics ``K`` = [[f_x, s, c_x], [0, f_y, c_y], [0, 0, 1]] in pixels; ``s`` (skew) is honoured.
* Boxes: centre (X, Y, Z), dimensions ``dims_lwh`` = (L, W, H) in metres and a rotation ``R`` that
  maps box-local coordinates to the camera frame. Box-local extents follow Omni3D: x = +-L/2,
  y = +-H/2, z = +-W/2 (Omni3D JSON stores dimensions as [W, H, L]; see `Box3D.from_omni3d`).
* Rotations as 6D vectors follow PyTorch3D: the first two ROWS of the matrix.

Numeric functions accept numpy arrays (computed in float64) and torch tensors (computed in the
tensor's dtype and device, differentiable), with any leading batch shape; Python floats are
accepted where a scalar makes sense and give a Python float back. The box IoU functions are
evaluation code: they run in float64 numpy and are not differentiable.

Validation: every function checks its input by default and raises `InvalidInputError` (a
ValueError) naming the argument, the offending value and what is allowed, instead of returning NaN.
On torch tensors a check is one reduction and one host sync per argument; it never touches the
autograd graph. Training loops that have already guaranteed their inputs (for example a depth made
positive by softplus) may pass ``validate=False`` to skip the checks; the functions then still avoid
NaN where a clamp is cheap (6D normalisation) but otherwise compute the formula as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from llmi3d_core.errors import InvalidInputError

__all__ = [
    "Box3D",
    "VirtualCamera",
    "allocentric_to_egocentric",
    "backproject",
    "box3d_corners",
    "box3d_iou",
    "box3d_iou_batch",
    "box3d_iou_mono3dvg",
    "box3d_volume",
    "centre_segment",
    "combined_depth",
    "egocentric_to_allocentric",
    "euler_to_matrix",
    "fuse_log_depths",
    "height_depth",
    "keypoint_height_depth",
    "matrix_to_euler",
    "matrix_to_rotation_6d",
    "project",
    "ray_rotation",
    "real_to_virtual_depth",
    "rotation_6d_to_matrix",
    "virtual_to_real_depth",
]

FloatArray = npt.NDArray[np.float64]
# Value of the same kind as the input: numpy array, torch tensor or Python float.
ArrayT = TypeVar("ArrayT", npt.NDArray[Any], torch.Tensor, float)
# Secondary arguments (focal lengths, widths): scalars or arrays that broadcast with the first one.
ArrayLike = float | npt.NDArray[Any] | torch.Tensor


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


# --------------------------------------------------------------------------------------------
# numpy / torch plumbing
# --------------------------------------------------------------------------------------------


class _NumpyOps:
    """The few array operations the formulas need, numpy flavour (float64)."""

    is_torch = False

    @staticmethod
    def asarray(x: Any) -> Any:
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def stack(xs: list[Any], axis: int) -> Any:
        return np.stack(np.broadcast_arrays(*xs), axis=axis)

    @staticmethod
    def transpose(m: Any) -> Any:
        return np.swapaxes(m, -1, -2)

    @staticmethod
    def cross(a: Any, b: Any) -> Any:
        return np.cross(a, b)

    @staticmethod
    def norm(x: Any, keepdims: bool = True) -> Any:
        return np.linalg.norm(x, axis=-1, keepdims=keepdims)

    @staticmethod
    def dot(a: Any, b: Any) -> Any:
        return (a * b).sum(axis=-1, keepdims=True)

    @staticmethod
    def clamp_min(x: Any, lo: float) -> Any:
        return np.maximum(x, lo)

    @staticmethod
    def clip(x: Any, lo: float, hi: float) -> Any:
        return np.clip(x, lo, hi)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return np.where(cond, a, b)

    @staticmethod
    def sqrt(x0: Any) -> Any:
        return np.sqrt(x0)

    @staticmethod
    def sin(x0: Any) -> Any:
        return np.sin(x0)

    @staticmethod
    def cos(x0: Any) -> Any:
        return np.cos(x0)

    @staticmethod
    def asin(x0: Any) -> Any:
        return np.arcsin(x0)

    @staticmethod
    def atan2(x0: Any, x1: Any) -> Any:
        return np.arctan2(x0, x1)

    @staticmethod
    def abs(x0: Any) -> Any:
        return np.abs(x0)

    @staticmethod
    def ones_like(x0: Any) -> Any:
        return np.ones_like(x0)

    @staticmethod
    def zeros_like(x0: Any) -> Any:
        return np.zeros_like(x0)


class _TorchOps:
    """Same operations in torch, in the dtype/device of a reference tensor (differentiable)."""

    is_torch = True

    def __init__(self, ref: torch.Tensor) -> None:
        self.dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        self.device = ref.device

    def asarray(self, x: Any) -> Any:
        return torch.as_tensor(x, dtype=self.dtype, device=self.device)

    @staticmethod
    def stack(xs: list[Any], axis: int) -> Any:
        tensors = torch.broadcast_tensors(*xs)  # type: ignore[no-untyped-call]
        return torch.stack(tensors, dim=axis)

    @staticmethod
    def transpose(m: Any) -> Any:
        return m.transpose(-1, -2)

    @staticmethod
    def cross(a: Any, b: Any) -> Any:
        a, b = torch.broadcast_tensors(a, b)  # type: ignore[no-untyped-call]
        return torch.linalg.cross(a, b, dim=-1)

    @staticmethod
    def norm(x: Any, keepdims: bool = True) -> Any:
        return torch.linalg.vector_norm(x, dim=-1, keepdim=keepdims)

    @staticmethod
    def dot(a: Any, b: Any) -> Any:
        return (a * b).sum(dim=-1, keepdim=True)

    @staticmethod
    def clamp_min(x: Any, lo: float) -> Any:
        return torch.clamp(x, min=lo)

    @staticmethod
    def clip(x: Any, lo: float, hi: float) -> Any:
        return torch.clamp(x, lo, hi)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return torch.where(cond, a, b)

    @staticmethod
    def sqrt(x0: Any) -> Any:
        return torch.sqrt(x0)

    @staticmethod
    def sin(x0: Any) -> Any:
        return torch.sin(x0)

    @staticmethod
    def cos(x0: Any) -> Any:
        return torch.cos(x0)

    @staticmethod
    def asin(x0: Any) -> Any:
        return torch.asin(x0)

    @staticmethod
    def atan2(x0: Any, x1: Any) -> Any:
        return torch.atan2(x0, x1)

    @staticmethod
    def abs(x0: Any) -> Any:
        return torch.abs(x0)

    @staticmethod
    def ones_like(x0: Any) -> Any:
        return torch.ones_like(x0)

    @staticmethod
    def zeros_like(x0: Any) -> Any:
        return torch.zeros_like(x0)


_Ops = _NumpyOps | _TorchOps


def _ops(*values: Any) -> _Ops:
    """Torch operations if any argument is a tensor (in the first tensor's dtype), else numpy."""
    for value in values:
        if isinstance(value, torch.Tensor):
            return _TorchOps(value)
    return _NumpyOps()


def _is_python_scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finish(result: Any, primary: Any) -> Any:
    """Return a Python float when the primary input was one, else the array/tensor as is."""
    if _is_python_scalar(primary):
        return float(result)
    return result


def _describe(value: Any, mask: Any) -> str:
    """Short text naming the first offending element of `value` where `mask` is True."""
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    bad = np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask)
    if arr.ndim == 0:
        return f"{arr.item()!r}"
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return (
        f"{arr[index].item()!r} at index {index} (shape {tuple(arr.shape)}, {int(bad.sum())} bad)"
    )


def _any(mask: Any) -> bool:
    if isinstance(mask, torch.Tensor):
        return bool(mask.any().item())
    return bool(np.any(mask))


def _check_finite(name: str, value: Any) -> None:
    """Raise InvalidInputError if `value` has NaN or infinite entries (not part of autograd)."""
    if isinstance(value, torch.Tensor):
        bad = ~torch.isfinite(value.detach())
    else:
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InvalidInputError(f"{name} must be real numbers, got dtype {arr.dtype}")
        bad = ~np.isfinite(arr)
    if _any(bad):
        raise InvalidInputError(f"{name} must be finite, got {_describe(value, bad)}")


def _check_positive(name: str, value: Any, what: str = "") -> None:
    """Raise InvalidInputError unless every entry of `value` is finite and > 0."""
    _check_finite(name, value)
    bad = (value.detach() if isinstance(value, torch.Tensor) else np.asarray(value)) <= 0
    if _any(bad):
        extra = f" ({what})" if what else ""
        raise InvalidInputError(f"{name} must be > 0{extra}, got {_describe(value, bad)}")


def _check_last_dims(name: str, value: Any, dims: tuple[int, ...]) -> None:
    shape = tuple(value.shape) if hasattr(value, "shape") else ()
    if len(shape) < len(dims) or shape[len(shape) - len(dims) :] != dims:
        wanted = ", ".join(str(d) for d in dims)
        raise InvalidInputError(f"{name} must have shape (..., {wanted}), got {shape}")


def _intrinsics(ops: _Ops, K: Any, validate: bool) -> tuple[Any, Any, Any, Any, Any]:
    """(f_x, f_y, c_x, c_y, skew), each of shape (...) from K (..., 3, 3)."""
    K = ops.asarray(K)
    if validate:
        _check_last_dims("K", K, (3, 3))
        _check_finite("K", K)
        _check_positive("K[..., 0, 0] (f_x)", K[..., 0, 0], "focal length in pixels")
        _check_positive("K[..., 1, 1] (f_y)", K[..., 1, 1], "focal length in pixels")
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
        validate: check that all values are finite and > 0 (see the module docstring).

    Returns:
        Virtual depth Z_v, shape (...), same kind as ``z``.

    Raises:
        InvalidInputError: a non-finite value, or a depth, focal length or width <= 0.
    """
    ops = _ops(z, fx, width, f_virtual, w_virtual)
    args = {"z": z, "fx": fx, "width": width, "f_virtual": f_virtual, "w_virtual": w_virtual}
    zz, fxx, ww, fv, wv = (ops.asarray(v) for v in args.values())
    if validate:
        for name, value in zip(args, (zz, fxx, ww, fv, wv), strict=True):
            _check_positive(
                name, value, "depth must be in front of the camera" if name == "z" else ""
            )
    return _finish(zz * (fv / fxx) * (ww / wv), z)  # type: ignore[no-any-return]


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
    ops = _ops(zv, fx, width, f_virtual, w_virtual)
    args = {"zv": zv, "fx": fx, "width": width, "f_virtual": f_virtual, "w_virtual": w_virtual}
    zz, fxx, ww, fv, wv = (ops.asarray(v) for v in args.values())
    if validate:
        for name, value in zip(args, (zz, fxx, ww, fv, wv), strict=True):
            _check_positive(
                name, value, "depth must be in front of the camera" if name == "zv" else ""
            )
    return _finish(zz * (fxx / fv) * (wv / ww), zv)  # type: ignore[no-any-return]


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
    ops = _ops(H, h, fy)
    HH, hh, ff = ops.asarray(H), ops.asarray(h), ops.asarray(fy)
    if validate:
        _check_positive("H", HH, "metric object height")
        _check_positive("h", hh, "2D box height in pixels")
        _check_positive("fy", ff, "focal length in pixels")
    return _finish(ff * HH / hh, H)  # type: ignore[no-any-return]


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
    ops = _ops(z_virtual_based, z_height_based)
    z1, z2 = ops.asarray(z_virtual_based), ops.asarray(z_height_based)
    if validate:
        _check_positive("z_virtual_based", z1, "depth must be in front of the camera")
        _check_positive("z_height_based", z2, "depth must be in front of the camera")
    return _finish((z1 + z2) / 2, z_virtual_based)  # type: ignore[no-any-return]


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
    ops = _ops(center, dims_lwh, R)
    c, dims, m = ops.asarray(center), ops.asarray(dims_lwh), ops.asarray(R)
    if validate:
        _check_last_dims("center", c, (3,))
        _check_last_dims("dims_lwh", dims, (3,))
        _check_last_dims("R", m, (3, 3))
        for name, value in (("center", c), ("dims_lwh", dims), ("R", m)):
            _check_finite(name, value)
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
    ops = _ops(h, H, v, R, K)
    hh, HH, vv, m = ops.asarray(h), ops.asarray(H), ops.asarray(v), ops.asarray(R)
    if validate:
        _check_positive("h", hh, "projected height of the centre segment in pixels")
        _check_positive("H", HH, "metric object height")
        _check_finite("v", vv)
        _check_last_dims("R", m, (3, 3))
        _check_finite("R", m)
    _, fy, _, cy, _ = _intrinsics(ops, K, validate)
    y_n = (vv - cy) / fy
    d_y, d_z = m[..., 1, 1], m[..., 2, 1]
    k = ops.abs(d_y - y_n * d_z)
    delta = ops.abs(hh / fy)
    z = 0.5 * HH * (k + ops.sqrt(k * k + delta * delta * d_z * d_z)) / delta
    return _finish(z, h)  # type: ignore[no-any-return]


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
    ops = _ops(log_z, log_scale)
    lz, ls = ops.asarray(log_z), ops.asarray(log_scale)
    if validate:
        _check_finite("log_z", lz)
        _check_finite("log_scale", ls)
    if ops.is_torch:
        weights = torch.softmax(-ls.expand_as(lz), dim=-1)  # 1/b_i normalised, overflow-safe
    else:
        shifted = -(ls + np.zeros_like(lz))
        weights = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return _finish((weights * lz).sum(-1), log_z)  # type: ignore[no-any-return]


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
    ops = _ops(u, v, z, K)
    uu, vv, zz = ops.asarray(u), ops.asarray(v), ops.asarray(z)
    if validate:
        _check_finite("u", uu)
        _check_finite("v", vv)
        _check_positive("z", zz, "a point must be in front of the camera")
    fx, fy, cx, cy, skew = _intrinsics(ops, K, validate)
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
    ops = _ops(points, K)
    pts = ops.asarray(points)
    if validate:
        _check_last_dims("points", pts, (3,))
        _check_finite("points", pts)
        _check_positive("points[..., 2] (Z)", pts[..., 2], "a point must be in front of the camera")
    fx, fy, cx, cy, skew = _intrinsics(ops, K, validate)
    x_n = pts[..., 0] / pts[..., 2]  # (...)
    y_n = pts[..., 1] / pts[..., 2]  # (...)
    return ops.stack([fx * x_n + skew * y_n + cx, fy * y_n + cy], axis=-1)  # (..., 2)


# --------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------

_EPS_NORM = 1e-8


def rotation_6d_to_matrix(d6: ArrayT, *, validate: bool = True) -> ArrayT:
    """6D rotation representation -> rotation matrix (Zhou et al. 2019, PyTorch3D convention).

    ``b1 = a1/|a1|``, ``b2 = norm(a2 - (b1.a2) b1)``, ``b3 = b1 x b2``; the matrix has ROWS
    (b1, b2, b3). Continuous, so a good regression target, and differentiable in torch.

    Args:
        d6: (..., 6) = [a1 (3), a2 (3)].
        validate: check finiteness and that a1 and a2 are non-zero and not parallel. Without it,
            degenerate input still gives finite numbers (norms are clamped at 1e-8).

    Returns:
        Rotation matrices (..., 3, 3), same kind as ``d6``.

    Raises:
        InvalidInputError: wrong shape, non-finite values, or a1 / a2 degenerate.
    """
    ops = _ops(d6)
    x = ops.asarray(d6)
    if validate:
        _check_last_dims("d6", x, (6,))
        _check_finite("d6", x)
    a1, a2 = x[..., :3], x[..., 3:]  # (..., 3) each
    n1 = ops.norm(a1)  # (..., 1)
    b1 = a1 / ops.clamp_min(n1, _EPS_NORM)
    a2_perp = a2 - ops.dot(b1, a2) * b1  # Gram-Schmidt, (..., 3)
    n2 = ops.norm(a2_perp)  # (..., 1)
    if validate:
        scale = ops.norm(a2)
        bad = (
            (n1[..., 0] <= _EPS_NORM)
            | (n2[..., 0] <= 1e-6 * scale[..., 0])
            | (scale[..., 0] <= _EPS_NORM)
        )
        if _any(bad):
            raise InvalidInputError(
                "d6 must hold two non-zero, non-parallel 3-vectors a1 = d6[..., :3] and "
                f"a2 = d6[..., 3:]; degenerate at {_describe(n2[..., 0], bad)} (|a2 - proj| shown)"
            )
    b2 = a2_perp / ops.clamp_min(n2, _EPS_NORM)
    b3 = ops.cross(b1, b2)
    return ops.stack([b1, b2, b3], axis=-2)  # type: ignore[no-any-return]  # (..., 3, 3)


def matrix_to_rotation_6d(R: ArrayT, *, validate: bool = True) -> ArrayT:
    """Rotation matrix -> 6D representation: its first two rows (PyTorch3D convention).

    Args:
        R: (..., 3, 3) rotation matrices.
        validate: check shape and finiteness.

    Returns:
        (..., 6) = [R[0, :], R[1, :]], same kind as ``R``.

    Raises:
        InvalidInputError: wrong shape or non-finite values.
    """
    ops = _ops(R)
    m = ops.asarray(R)
    if validate:
        _check_last_dims("R", m, (3, 3))
        _check_finite("R", m)
    return m[..., :2, :].reshape(*m.shape[:-2], 6)  # type: ignore[no-any-return]


def ray_rotation(u: ArrayLike, v: ArrayLike, K: ArrayLike, *, validate: bool = True) -> Any:
    """Rotation M that turns the optical axis onto the viewing ray of pixel (u, v) (Omni3D).

    Omni3D builds it as an axis-angle rotation: ray r = norm([(u-c_x)/f_x, (v-c_y)/f_y, 1]),
    angle = acos(r_z), axis = norm([-r_y, r_x, 0]). We use the equivalent closed form of the
    smallest rotation taking e_z to r, ``M = I + [a]x + [a]x^2 / (1 + r_z)`` with a = e_z x r,
    which has no division by |axis| and so stays exact and differentiable on the optical axis
    (where M = I). r_z > 0 always, since the ray points forward.

    Args:
        u: column in pixels, shape (...).
        v: row in pixels, shape (...).
        K: intrinsics (3, 3) or (..., 3, 3).
        validate: check finiteness and positive focal lengths.

    Returns:
        M (..., 3, 3) with ``M @ [0, 0, 1] = r``.

    Raises:
        InvalidInputError: non-finite u, v or K, or a focal length <= 0.
    """
    ops = _ops(u, v, K)
    uu, vv = ops.asarray(u), ops.asarray(v)
    if validate:
        _check_finite("u", uu)
        _check_finite("v", vv)
    fx, fy, cx, cy, skew = _intrinsics(ops, K, validate)
    y_n = (vv - cy) / fy
    x_n = (uu - cx - skew * y_n) / fx
    inv_len = 1.0 / ops.sqrt(x_n * x_n + y_n * y_n + 1.0)
    rx, ry, rz = x_n * inv_len, y_n * inv_len, inv_len  # unit ray, (...) each
    k = 1.0 / (1.0 + rz)
    one = ops.ones_like(rx)
    rows = [
        ops.stack([one - rx * rx * k, -rx * ry * k, rx], axis=-1),
        ops.stack([-rx * ry * k, one - ry * ry * k, ry], axis=-1),
        ops.stack([-rx, -ry, rz * one], axis=-1),
    ]
    return ops.stack(rows, axis=-2)  # (..., 3, 3)


def egocentric_to_allocentric(
    R: ArrayT, u: ArrayLike, v: ArrayLike, K: ArrayLike, *, validate: bool = True
) -> ArrayT:
    """Egocentric (camera-frame) rotation -> allocentric rotation (Omni3D convention).

    The allocentric rotation is the object's rotation relative to its viewing ray, which is what
    its appearance determines: ``R_allo = M^T R_ego`` with M = `ray_rotation` (u, v, K), (u, v)
    the projected 3D centre. Identity M on the optical axis.

    Args:
        R: (..., 3, 3) egocentric rotation (box-local -> camera).
        u: projected box centre column in pixels, shape (...).
        v: projected box centre row in pixels, shape (...).
        K: intrinsics (3, 3) or (..., 3, 3).
        validate: check shapes and finiteness.

    Returns:
        (..., 3, 3) allocentric rotation, same kind as ``R``.

    Raises:
        InvalidInputError: wrong shape or non-finite values, or a focal length <= 0.
    """
    ops = _ops(R, u, v, K)
    m = ops.asarray(R)
    if validate:
        _check_last_dims("R", m, (3, 3))
        _check_finite("R", m)
    M = ray_rotation(u, v, K, validate=validate)
    return ops.transpose(M) @ m  # type: ignore[no-any-return]


def allocentric_to_egocentric(
    R: ArrayT, u: ArrayLike, v: ArrayLike, K: ArrayLike, *, validate: bool = True
) -> ArrayT:
    """Allocentric rotation -> egocentric (camera-frame) rotation, the inverse of the above.

    ``R_ego = M R_allo`` with M = `ray_rotation` (u, v, K).

    Args:
        R: (..., 3, 3) allocentric rotation.
        u: projected box centre column in pixels, shape (...).
        v: projected box centre row in pixels, shape (...).
        K: intrinsics (3, 3) or (..., 3, 3).
        validate: check shapes and finiteness.

    Returns:
        (..., 3, 3) egocentric rotation (box-local -> camera), same kind as ``R``.

    Raises:
        InvalidInputError: wrong shape or non-finite values, or a focal length <= 0.
    """
    ops = _ops(R, u, v, K)
    m = ops.asarray(R)
    if validate:
        _check_last_dims("R", m, (3, 3))
        _check_finite("R", m)
    M = ray_rotation(u, v, K, validate=validate)
    return M @ m  # type: ignore[no-any-return]


_AXIS_INDEX = {"X": 0, "Y": 1, "Z": 2}


def _parse_convention(convention: str) -> tuple[int, int, int, float]:
    """Tait-Bryan convention 'XYZ' -> axis indices and parity sign (+1 cyclic, -1 otherwise)."""
    conv = convention.upper() if isinstance(convention, str) else ""
    if len(conv) != 3 or set(conv) != {"X", "Y", "Z"}:
        raise InvalidInputError(
            f"convention must be a permutation of 'XYZ' (Tait-Bryan angles), got {convention!r}"
        )
    i, j, k = (_AXIS_INDEX[c] for c in conv)
    sign = 1.0 if (j - i) % 3 == 1 else -1.0
    return i, j, k, sign


def _axis_rotation(ops: _Ops, axis: int, angle: Any) -> Any:
    """Elementary rotation matrices (..., 3, 3) about x (0), y (1) or z (2) by `angle` rad."""
    c, s = ops.cos(angle), ops.sin(angle)
    one, zero = ops.ones_like(angle), ops.zeros_like(angle)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return ops.stack([ops.stack(r, axis=-1) for r in rows], axis=-2)


def euler_to_matrix(angles: ArrayT, convention: str = "XYZ", *, validate: bool = True) -> ArrayT:
    """Tait-Bryan angles -> rotation matrix, ``R = R_a(angles[0]) R_b(angles[1]) R_c(angles[2])``.

    For the Euler-angle baseline of the paper's Table XIII. With convention "XYZ" this is
    ``Rx(a0) @ Ry(a1) @ Rz(a2)`` (same composition order as PyTorch3D's
    ``euler_angles_to_matrix``). Angles in radians.

    Args:
        angles: (..., 3) angles in radians, in the order of the letters of ``convention``.
        convention: a permutation of "XYZ" naming the axis of each angle.
        validate: check shape and finiteness.

    Returns:
        (..., 3, 3) rotation matrices, same kind as ``angles``.

    Raises:
        InvalidInputError: wrong shape, non-finite angles or an unknown convention.
    """
    i, j, k, _ = _parse_convention(convention)
    ops = _ops(angles)
    a = ops.asarray(angles)
    if validate:
        _check_last_dims("angles", a, (3,))
        _check_finite("angles", a)
    return (  # type: ignore[no-any-return]
        _axis_rotation(ops, i, a[..., 0])
        @ _axis_rotation(ops, j, a[..., 1])
        @ _axis_rotation(ops, k, a[..., 2])
    )


def matrix_to_euler(R: ArrayT, convention: str = "XYZ", *, validate: bool = True) -> ArrayT:
    """Rotation matrix -> Tait-Bryan angles, the inverse of `euler_to_matrix`.

    Ranges: the middle angle in [-pi/2, pi/2], the others in (-pi, pi]. At gimbal lock
    (middle angle +-pi/2) the first and last angles are coupled; we return the last as 0.

    Args:
        R: (..., 3, 3) rotation matrices.
        convention: a permutation of "XYZ", as in `euler_to_matrix`.
        validate: check shape and finiteness.

    Returns:
        (..., 3) angles in radians, same kind as ``R``.

    Raises:
        InvalidInputError: wrong shape, non-finite values or an unknown convention.
    """
    i, j, k, sign = _parse_convention(convention)
    ops = _ops(R)
    m = ops.asarray(R)
    if validate:
        _check_last_dims("R", m, (3, 3))
        _check_finite("R", m)
    # R = R_i(a) R_j(b) R_k(c): R[i, k] = sign * sin b, R[j, k] = -sign * sin a cos b,
    # R[k, k] = cos a cos b, R[i, j] = -sign * cos b sin c, R[i, i] = cos b cos c.
    sin_b = ops.clip(sign * m[..., i, k], -1.0, 1.0)
    b = ops.asin(sin_b)
    locked = ops.abs(sin_b) > 1.0 - 1e-12
    a_free = ops.atan2(-sign * m[..., j, k], m[..., k, k])
    c_free = ops.atan2(-sign * m[..., i, j], m[..., i, i])
    a_locked = ops.atan2(sign * m[..., k, j], m[..., j, j])
    a = ops.where(locked, a_locked, a_free)
    c = ops.where(locked, ops.zeros_like(c_free), c_free)
    return ops.stack([a, b, c], axis=-1)  # type: ignore[no-any-return]


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
    ops = _ops(center, dims_lwh, R)
    c, d, m = ops.asarray(center), ops.asarray(dims_lwh), ops.asarray(R)
    if validate:
        _check_last_dims("center", c, (3,))
        _check_last_dims("dims_lwh", d, (3,))
        _check_last_dims("R", m, (3, 3))
        _check_finite("center", c)
        _check_positive("dims_lwh", d, "box sizes (L, W, H) in metres")
        _check_finite("R", m)
    half = ops.stack([d[..., 0], d[..., 2], d[..., 1]], axis=-1) / 2  # (..., 3) along x, y, z
    local = ops.asarray(_CORNER_SIGNS) * half[..., None, :]  # (..., 8, 3)
    return local @ ops.transpose(m) + c[..., None, :]  # (..., 8, 3)


def box3d_volume(corners: ArrayLike) -> FloatArray:
    """Volume (m^3) of boxes given by corners (..., 8, 3) in `box3d_corners` order."""
    arr = _corners_numpy("corners", corners)
    return _parallelepiped_volume(arr)


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
        _check_positive("dims_lwh", dims, "box sizes (L, W, H) in metres")
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
    _check_finite(name, arr)
    return arr


# --------------------------------------------------------------------------------------------
# 3D IoU
# --------------------------------------------------------------------------------------------

# The 6 faces of a box as corner indices (see the drawing in `box3d_corners`). Their winding is
# fixed at run time so that every face is counter-clockwise seen from outside.
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
    _check_last_dims(name, arr, (8, 3))
    _check_finite(name, arr)
    return arr


def _parallelepiped_volume(corners: FloatArray) -> FloatArray:
    """|det(c1 - c0, c3 - c0, c4 - c0)|: the volume for corners in `box3d_corners` order."""
    edges = (
        np.stack([corners[..., 1, :], corners[..., 3, :], corners[..., 4, :]], axis=-2)
        - corners[..., None, 0, :]
    )
    volume: FloatArray = np.abs(np.linalg.det(edges))
    return volume


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
        corners_a: (N, 8, 3) corners in `box3d_corners` order (any consistent box corners:
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
            tiny = vol <= 1e-12 * np.maximum(np.abs(arr).max(axis=(1, 2)), 1.0) ** 3
            if np.any(tiny):
                raise InvalidInputError(
                    f"{name} must describe boxes with volume > 0, got volume "
                    f"{_describe(vol, tiny)} m^3"
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
        corners_a: (8, 3) or (..., 8, 3) corners in `box3d_corners` order.
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
            _check_last_dims(name, arr, (3,))
            if name.startswith("dims"):
                _check_positive(name, arr, "box sizes (L, W, H) in metres")
            else:
                _check_finite(name, arr)
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
