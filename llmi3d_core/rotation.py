"""Rotation representations of LLMI3D: 6D, allocentric vs egocentric, and Euler angles.

The model regresses the allocentric rotation (relative to the viewing ray, which is what the
object's appearance determines) as a 6D vector; the box needs the egocentric one (camera frame).
Euler angles are the baseline of the paper's Table XIII.

Conventions: rotations map box-local coordinates to the camera frame (see `llmi3d_core.geometry`);
6D vectors follow PyTorch3D, the first two ROWS of the matrix. Every function takes numpy arrays
or torch tensors and validates its input as described in `llmi3d_core.arrays`.
"""

from __future__ import annotations

from typing import Any

from llmi3d_core.arrays import (
    ArrayLike,
    ArrayT,
    Ops,
    any_true,
    check_finite,
    check_last_dims,
    describe_bad,
    ops_for,
)
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import split_intrinsics

__all__ = [
    "allocentric_to_egocentric",
    "egocentric_to_allocentric",
    "euler_to_matrix",
    "matrix_to_euler",
    "matrix_to_rotation_6d",
    "ray_rotation",
    "rotation_6d_to_matrix",
]

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
    ops = ops_for(d6)
    x = ops.asarray(d6)
    if validate:
        check_last_dims("d6", x, (6,))
        check_finite("d6", x)
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
        if any_true(bad):
            raise InvalidInputError(
                "d6 must hold two non-zero, non-parallel 3-vectors a1 = d6[..., :3] and "
                f"a2 = d6[..., 3:]; degenerate at {describe_bad(n2[..., 0], bad)} "
                "(|a2 - proj| shown)"
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
    ops = ops_for(R)
    m = ops.asarray(R)
    if validate:
        check_last_dims("R", m, (3, 3))
        check_finite("R", m)
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
    ops = ops_for(u, v, K)
    uu, vv = ops.asarray(u), ops.asarray(v)
    if validate:
        check_finite("u", uu)
        check_finite("v", vv)
    fx, fy, cx, cy, skew = split_intrinsics(ops, K, validate)
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
    ops = ops_for(R, u, v, K)
    m = ops.asarray(R)
    if validate:
        check_last_dims("R", m, (3, 3))
        check_finite("R", m)
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
    ops = ops_for(R, u, v, K)
    m = ops.asarray(R)
    if validate:
        check_last_dims("R", m, (3, 3))
        check_finite("R", m)
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


def _axis_rotation(ops: Ops, axis: int, angle: Any) -> Any:
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
    ops = ops_for(angles)
    a = ops.asarray(angles)
    if validate:
        check_last_dims("angles", a, (3,))
        check_finite("angles", a)
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
    ops = ops_for(R)
    m = ops.asarray(R)
    if validate:
        check_last_dims("R", m, (3, 3))
        check_finite("R", m)
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
