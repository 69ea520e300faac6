"""Tests of llmi3d_core.geometry, .rotation and .iou: known values, round trips, numpy vs torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError
from scipy.spatial.transform import Rotation
from scipy.stats import qmc

from llmi3d_core import geometry as g
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.iou import box3d_iou, box3d_iou_batch, box3d_iou_mono3dvg, box3d_volume
from llmi3d_core.rotation import (
    allocentric_to_egocentric,
    egocentric_to_allocentric,
    euler_to_matrix,
    matrix_to_euler,
    matrix_to_rotation_6d,
    ray_rotation,
    rotation_6d_to_matrix,
)

KITTI_K = np.array([[721.5, 0.0, 609.6], [0.0, 721.5, 172.9], [0.0, 0.0, 1.0]])
SETTINGS = settings(max_examples=60, deadline=None)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
positive = st.floats(1e-2, 1e3, allow_nan=False, allow_infinity=False)
angles3 = hnp.arrays(np.float64, (3,), elements=st.floats(-math.pi, math.pi))
quat = hnp.arrays(np.float64, (4,), elements=st.floats(-1, 1)).filter(
    lambda q: np.linalg.norm(q) > 0.1
)


def rotation(q: np.ndarray) -> np.ndarray:
    return Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()


def intrinsics(fx: float = 700.0, fy: float = 710.0, cx: float = 320.0, cy: float = 240.0):
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------- depth


def test_virtual_depth_design_example():
    zv = g.real_to_virtual_depth(20.0, 721.5, 1242, 512, 448)
    assert isinstance(zv, float)
    assert zv == pytest.approx(39.35, abs=5e-3)
    assert g.virtual_to_real_depth(zv, 721.5, 1242, 512, 448) == pytest.approx(20.0)


def test_virtual_camera_defaults_are_used():
    cam = g.VirtualCamera()
    assert (cam.focal_px, cam.width_px) == (512.0, 448.0)
    assert g.real_to_virtual_depth(20.0, 721.5, 1242) == pytest.approx(39.3466, abs=1e-4)
    assert cam.to_virtual(20.0, 721.5, 1242) == pytest.approx(39.3466, abs=1e-4)
    assert cam.to_real(39.34659934659934, 721.5, 1242) == pytest.approx(20.0)
    with pytest.raises(InvalidInputError, match=r"VirtualCamera.focal_px must be .* > 0, got 0"):
        g.VirtualCamera(focal_px=0)
    with pytest.raises(InvalidInputError, match="width_px"):
        g.VirtualCamera(width_px=float("nan"))


def test_height_and_combined_depth_hand_values():
    assert g.height_depth(1.5, 105.0, 700.0) == pytest.approx(10.0)
    assert g.combined_depth(9.0, 11.0) == pytest.approx(10.0)
    z = g.height_depth(np.array([1.5, 3.0]), np.array([105.0, 105.0]), 700.0)
    np.testing.assert_allclose(z, [10.0, 20.0])


@SETTINGS
@given(z=positive, fx=st.floats(50, 5000), width=st.floats(64, 8192))
def test_virtual_depth_round_trip(z, fx, width):
    zv = g.real_to_virtual_depth(z, fx, width)
    assert g.virtual_to_real_depth(zv, fx, width) == pytest.approx(z, rel=1e-12)


def test_depth_torch_batched_and_differentiable():
    z = torch.tensor([[5.0, 20.0]], dtype=torch.float64, requires_grad=True)
    fx = torch.tensor([[721.5], [500.0]], dtype=torch.float64)
    zv = g.real_to_virtual_depth(z, fx, 1242.0)
    assert zv.shape == (2, 2)
    np.testing.assert_allclose(
        zv.detach().numpy(), g.real_to_virtual_depth(z.detach().numpy(), fx.numpy(), 1242.0)
    )
    zv.sum().backward()
    assert torch.isfinite(z.grad).all()
    z2 = g.height_depth(torch.tensor([1.5]), torch.tensor([105.0]), 700.0)
    assert isinstance(z2, torch.Tensor) and z2.dtype == torch.float32


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: g.real_to_virtual_depth(-1.0, 721.5, 1242), r"z must be > 0 \(depth"),
        (lambda: g.real_to_virtual_depth(0.0, 721.5, 1242), r"z must be > 0"),
        (lambda: g.real_to_virtual_depth(5.0, 0.0, 1242), r"fx must be > 0, got 0.0"),
        (lambda: g.real_to_virtual_depth(5.0, 721.5, -3), r"width must be > 0"),
        (lambda: g.real_to_virtual_depth(5.0, 721.5, 1242, 0.0), r"f_virtual must be > 0"),
        (
            lambda: g.virtual_to_real_depth(np.array([1.0, np.nan]), 721.5, 1242),
            r"zv must be finite.*index \(1,\)",
        ),
        (lambda: g.virtual_to_real_depth(1.0, 721.5, 1242, 512, 0), r"w_virtual must be > 0"),
        (lambda: g.height_depth(0.0, 10.0, 700.0), r"H must be > 0 \(metric"),
        (lambda: g.height_depth(1.0, 0.0, 700.0), r"h must be > 0 \(2D box height"),
        (lambda: g.height_depth(1.0, 10.0, float("inf")), r"fy must be finite"),
        (lambda: g.combined_depth(1.0, -2.0), r"z_height_based must be > 0"),
        (
            lambda: g.real_to_virtual_depth(torch.tensor([1.0, -1.0]), 721.5, 1242),
            r"z must be > 0.*-1.0",
        ),
    ],
)
def test_depth_errors(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()


def test_validate_false_skips_checks_without_breaking_autograd():
    z = torch.tensor([-1.0], requires_grad=True)
    zv = g.real_to_virtual_depth(z, 721.5, 1242.0, validate=False)
    zv.sum().backward()
    assert z.grad is not None and zv.item() < 0


# ---------------------------------------------------------- keypoint height depth and fusion


def test_keypoint_height_depth_is_eq19_for_an_upright_box_on_the_axis():
    K = intrinsics(fx=700.0, fy=710.0, cx=320.0, cy=240.0)
    z = g.keypoint_height_depth(71.0, 1.5, 240.0, np.eye(3), K)
    assert isinstance(z, float) and z == pytest.approx(710.0 * 1.5 / 71.0) == pytest.approx(15.0)
    # and the centre segment of that box (15 m away) projects to exactly those 71 px
    top, bottom = g.centre_segment(np.array([0.0, 0.0, 15.0]), np.array([1.0, 0.5, 1.5]), np.eye(3))
    np.testing.assert_allclose(top, [0.0, -0.75, 15.0])
    assert g.project(bottom, K)[1] - g.project(top, K)[1] == pytest.approx(71.0)


def test_keypoint_height_depth_pitched_hand_values():
    """A box pitched about x, off the axis, computed from the formula in the docstring."""
    # R[:, 1] = d = (0, 0.8, 0.6); centre Z = 10 m, y_n = 0.1 (v = 240 + 500 * 0.1); H = 2, a = 1
    R = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])
    K = intrinsics(fx=500.0, fy=500.0, cx=320.0, cy=240.0)
    top, bottom = g.centre_segment(np.array([0.0, 1.0, 10.0]), np.array([1.0, 1.0, 2.0]), R)
    np.testing.assert_allclose(top, [0.0, 0.2, 9.4])
    np.testing.assert_allclose(bottom, [0.0, 1.8, 10.6])
    # k = d_y - y_n d_z = 0.74;  Delta = h / f_y = 2 a Z k / (Z^2 - a^2 d_z^2) = 14.8 / 99.64
    h = g.project(bottom, K)[1] - g.project(top, K)[1]
    assert h == pytest.approx(500.0 * 14.8 / 99.64, rel=1e-12)
    # Z = a (k + sqrt(k^2 + Delta^2 d_z^2)) / Delta
    delta = 14.8 / 99.64
    by_hand = (0.74 + math.sqrt(0.74**2 + delta**2 * 0.36)) / delta
    assert by_hand == pytest.approx(10.0, rel=1e-12)
    assert g.keypoint_height_depth(h, 2.0, 290.0, R, K) == pytest.approx(10.0, rel=1e-12)
    assert g.height_depth(2.0, h, 500.0) == pytest.approx(13.465, abs=1e-3)  # eq. 19: 35 % off


@SETTINGS
@given(q=quat, x=st.floats(-6, 6), y=st.floats(-3, 3), z=st.floats(6, 80), H=st.floats(0.2, 4))
def test_keypoint_height_depth_recovers_the_depth_of_any_box(q, x, y, z, H):
    R = rotation(q)
    K = intrinsics()
    center = np.array([x, y, z])
    top, bottom = g.centre_segment(center, np.array([1.0, 1.0, H]), R)
    h = abs(g.project(bottom, K)[1] - g.project(top, K)[1])
    assume(h > 0.5)  # a segment seen nearly end-on has no usable height
    v = g.project(center, K)[1]
    assert g.keypoint_height_depth(h, H, v, R, K) == pytest.approx(z, rel=1e-6)


def test_keypoint_height_depth_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    R = np.stack([rotation(q) for q in rng.normal(size=(16, 4))])
    h, H = rng.uniform(5, 200, 16), rng.uniform(0.3, 3, 16)
    v, K = rng.uniform(0, 480, 16), intrinsics()
    expected = g.keypoint_height_depth(h, H, v, R, K)
    assert isinstance(expected, np.ndarray) and expected.shape == (16,)
    got = g.keypoint_height_depth(
        torch.from_numpy(h), torch.from_numpy(H), torch.from_numpy(v), torch.from_numpy(R),
        torch.from_numpy(K).expand(16, 3, 3),
    )  # fmt: skip
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"h": 0.0}, r"h must be > 0 \(projected height of the centre segment"),
        ({"h": -3.0}, r"h must be > 0"),
        ({"H": 0.0}, r"H must be > 0 \(metric object height"),
        ({"v": float("nan")}, r"v must be finite"),
        ({"R": np.eye(2)}, r"R must have shape \(\.\.\., 3, 3\)"),
        ({"K": intrinsics(fy=-1.0)}, r"\(f_y\) must be > 0 \(focal length"),
    ],
)
def test_keypoint_height_depth_errors(kwargs, match):
    args = {"h": 50.0, "H": 1.5, "v": 240.0, "R": np.eye(3), "K": intrinsics(), **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        g.keypoint_height_depth(**args)


def test_fuse_log_depths_hand_values():
    log_z = np.log([10.0, 40.0])
    # equal scales: the mean of the logs, i.e. the geometric mean of the depths
    assert math.exp(g.fuse_log_depths(log_z, np.array([0.3, 0.3]))) == pytest.approx(20.0)
    # one scale going to +infinity (log scale 50): the other estimate alone
    assert math.exp(g.fuse_log_depths(log_z, np.array([0.0, 50.0]))) == pytest.approx(10.0)
    assert math.exp(g.fuse_log_depths(log_z, np.array([50.0, 0.0]))) == pytest.approx(40.0)
    assert math.exp(g.fuse_log_depths(log_z, np.array([-50.0, 50.0]))) == pytest.approx(10.0)
    # scales b = 1 and 3: weights 1/b normalised, 3/4 and 1/4
    fused = g.fuse_log_depths(log_z, np.log([1.0, 3.0]))
    assert fused == pytest.approx(0.75 * math.log(10.0) + 0.25 * math.log(40.0))
    # huge equal scales do not overflow
    assert math.exp(g.fuse_log_depths(log_z, np.array([1e3, 1e3]))) == pytest.approx(20.0)


def test_fuse_log_depths_numpy_and_torch_agree_and_broadcast():
    rng = np.random.default_rng(1)
    log_z, log_scale = rng.normal(2, 1, (5, 2)), rng.normal(0, 2, (5, 2))
    expected = g.fuse_log_depths(log_z, log_scale)
    assert expected.shape == (5,)
    got = g.fuse_log_depths(torch.from_numpy(log_z), torch.from_numpy(log_scale))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    shared = g.fuse_log_depths(torch.from_numpy(log_z), torch.tensor([0.0, 50.0]).double())
    np.testing.assert_allclose(shared.numpy(), log_z[:, 0], rtol=1e-12)
    with pytest.raises(InvalidInputError, match=r"log_z must be finite"):
        g.fuse_log_depths(np.array([1.0, np.nan]), np.zeros(2))


# ----------------------------------------------------------------------------- projection


def test_backproject_hand_values():
    K = intrinsics()
    xyz = g.backproject(390.0, 311.0, 5.0, K)
    np.testing.assert_allclose(xyz, [0.5, 0.5, 5.0])
    np.testing.assert_allclose(g.project(xyz, K), [390.0, 311.0])
    np.testing.assert_allclose(g.backproject(320.0, 240.0, 2.0, K), [0.0, 0.0, 2.0])


@SETTINGS
@given(
    u=st.floats(-500, 1500),
    v=st.floats(-500, 1500),
    z=st.floats(0.05, 200),
    fx=st.floats(100, 3000),
    fy=st.floats(100, 3000),
    skew=st.floats(-5, 5),
)
def test_project_backproject_round_trip(u, v, z, fx, fy, skew):
    K = intrinsics(fx, fy, 600.0, 200.0)
    K[0, 1] = skew
    xyz = g.backproject(u, v, z, K)
    np.testing.assert_allclose(g.project(xyz, K), [u, v], atol=1e-6)
    np.testing.assert_allclose(g.backproject(*g.project(xyz, K).T, xyz[2], K), xyz, atol=1e-9)


def test_backproject_batched_numpy_torch_agree():
    rng = np.random.default_rng(1)
    u, v = rng.uniform(0, 640, (2, 7, 5))
    z = rng.uniform(1, 30, (7, 5))
    K = np.broadcast_to(intrinsics(), (7, 5, 3, 3))
    ref = g.backproject(u, v, z, K)
    assert ref.shape == (7, 5, 3)
    out = g.backproject(torch.tensor(u), torch.tensor(v), torch.tensor(z), torch.tensor(K))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(
        g.project(torch.tensor(ref), intrinsics()).numpy(), np.stack([u, v], -1)
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: g.backproject(1.0, 2.0, -1.0, intrinsics()),
            r"z must be > 0 \(a point must be in front",
        ),
        (
            lambda: g.backproject(1.0, 2.0, 1.0, intrinsics(fx=0.0)),
            r"K\[..., 0, 0\] \(f_x\) must be > 0",
        ),
        (lambda: g.backproject(1.0, 2.0, 1.0, intrinsics(fy=-5.0)), r"f_y\) must be > 0"),
        (lambda: g.backproject(np.nan, 2.0, 1.0, intrinsics()), r"u must be finite"),
        (lambda: g.backproject(1.0, 2.0, 1.0, np.eye(2)), r"K must have shape \(..., 3, 3\)"),
        (lambda: g.project(np.array([0.0, 0.0, -2.0]), intrinsics()), r"Z\) must be > 0"),
        (lambda: g.project(np.zeros((4, 2)), intrinsics()), r"points must have shape \(..., 3\)"),
        (lambda: g.project(torch.tensor([[1.0, 0.0, 0.0]]), intrinsics()), r"Z\) must be > 0"),
    ],
)
def test_projection_errors(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()


# ------------------------------------------------------------------------------ rotations


def test_rotation_6d_hand_values():
    R = rotation_6d_to_matrix(np.array([2.0, 0.0, 0.0, 1.0, 3.0, 0.0]))
    np.testing.assert_allclose(R, np.eye(3), atol=1e-15)
    R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(matrix_to_rotation_6d(R), [0, -1, 0, 1, 0, 0])


@SETTINGS
@given(q=quat)
def test_rotation_6d_round_trip(q):
    R = rotation(q)
    np.testing.assert_allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R, atol=1e-12)


@SETTINGS
@given(d6=hnp.arrays(np.float64, (6,), elements=st.floats(-10, 10)))
def test_rotation_6d_gives_rotations_and_torch_agrees(d6):
    a1, a2 = d6[:3], d6[3:]
    n1, n2 = np.linalg.norm(a1), np.linalg.norm(a2)
    perp = np.linalg.norm(np.cross(a1, a2)) / max(n1, 1e-300)  # |a2 - proj_a1(a2)|
    if n1 < 1e-9 or n2 < 1e-9 or perp < 1e-7 * n2:
        with pytest.raises(InvalidInputError, match="non-parallel"):
            rotation_6d_to_matrix(d6)
        return
    if n1 < 1e-6 or n2 < 1e-6 or perp < 1e-4 * n2:
        return  # too close to the threshold to say
    R = rotation_6d_to_matrix(d6)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0)
    # the 6D of a rotation matrix maps back to the same matrix (projection is idempotent)
    np.testing.assert_allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R, atol=1e-9)
    np.testing.assert_allclose(rotation_6d_to_matrix(torch.tensor(d6)).numpy(), R, atol=1e-12)


def test_rotation_6d_torch_gradcheck_and_degenerate_without_validation():
    d6 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (d6,))
    out = rotation_6d_to_matrix(torch.zeros(2, 6, requires_grad=True), validate=False)
    assert torch.isfinite(out).all()
    with pytest.raises(InvalidInputError, match=r"d6 must hold two non-zero, non-parallel"):
        rotation_6d_to_matrix(torch.zeros(2, 6))
    with pytest.raises(InvalidInputError, match=r"d6 must hold"):
        rotation_6d_to_matrix(np.array([1.0, 2.0, 3.0, 2.0, 4.0, 6.0]))
    with pytest.raises(InvalidInputError, match=r"d6 must have shape \(..., 6\), got \(5,\)"):
        rotation_6d_to_matrix(np.zeros(5))
    with pytest.raises(InvalidInputError, match=r"R must have shape \(..., 3, 3\)"):
        matrix_to_rotation_6d(np.zeros((3, 2)))
    with pytest.raises(InvalidInputError, match=r"R must be finite"):
        matrix_to_rotation_6d(np.full((3, 3), np.nan))


def omni3d_ray_rotation(u: float, v: float, K: np.ndarray) -> np.ndarray:
    """Omni3D's construction, literally: axis-angle about norm([-r_y, r_x, 0]) by acos(r_z)."""
    ray = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
    ray /= np.linalg.norm(ray)
    axis = np.array([-ray[1], ray[0], 0.0])
    if np.linalg.norm(axis) == 0:
        return np.eye(3)
    return Rotation.from_rotvec(math.acos(ray[2]) * axis / np.linalg.norm(axis)).as_matrix()


@SETTINGS
@given(q=quat, u=st.floats(-2000, 3000), v=st.floats(-2000, 3000))
def test_allocentric_matches_omni3d_and_round_trips(q, u, v):
    R = rotation(q)
    M = omni3d_ray_rotation(u, v, KITTI_K)
    R_allo = egocentric_to_allocentric(R, u, v, KITTI_K)
    np.testing.assert_allclose(R_allo, M.T @ R, atol=1e-9)
    np.testing.assert_allclose(allocentric_to_egocentric(R_allo, u, v, KITTI_K), R, atol=1e-12)
    ray = g.backproject(u, v, 1.0, KITTI_K)
    np.testing.assert_allclose(
        ray_rotation(u, v, KITTI_K)[:, 2], ray / np.linalg.norm(ray), atol=1e-12
    )


def test_allocentric_identity_on_optical_axis_and_torch_agrees():
    R = rotation(np.array([0.1, 0.2, 0.3, 0.9]))
    np.testing.assert_allclose(egocentric_to_allocentric(R, 609.6, 172.9, KITTI_K), R, atol=1e-15)
    rng = np.random.default_rng(3)
    Rs = Rotation.random(6, random_state=4).as_matrix()
    u, v = rng.uniform(0, 1242, 6), rng.uniform(0, 375, 6)
    ref = egocentric_to_allocentric(Rs, u, v, KITTI_K)
    out = egocentric_to_allocentric(
        torch.tensor(Rs), torch.tensor(u), torch.tensor(v), torch.tensor(KITTI_K)
    )
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    # differentiable w.r.t. the centre, including exactly on the optical axis
    uv = torch.tensor([609.6, 172.9], dtype=torch.float64, requires_grad=True)
    R_t = torch.tensor(R)
    assert torch.autograd.gradcheck(
        lambda t: allocentric_to_egocentric(R_t, t[0], t[1], torch.tensor(KITTI_K)), (uv,)
    )
    with pytest.raises(InvalidInputError, match=r"u must be finite"):
        egocentric_to_allocentric(R, float("nan"), 1.0, KITTI_K)
    with pytest.raises(InvalidInputError, match=r"R must have shape"):
        allocentric_to_egocentric(np.eye(4), 1.0, 1.0, KITTI_K)


@pytest.mark.parametrize("convention", ["XYZ", "ZYX", "YXZ", "XZY", "YZX", "ZXY"])
def test_euler_matches_scipy_intrinsic(convention):
    angles = np.array([0.3, -0.7, 2.1])
    ref = Rotation.from_euler(convention, angles).as_matrix()  # upper case = intrinsic
    np.testing.assert_allclose(euler_to_matrix(angles, convention), ref, atol=1e-12)


@SETTINGS
@given(
    a=st.floats(-3.1, 3.1),
    b=st.floats(-1.55, 1.55),
    c=st.floats(-3.1, 3.1),
    convention=st.sampled_from(["XYZ", "ZYX", "YXZ", "XZY", "YZX", "ZXY"]),
)
def test_euler_round_trip(a, b, c, convention):
    angles = np.array([a, b, c])
    R = euler_to_matrix(angles, convention)
    back = matrix_to_euler(R, convention)
    np.testing.assert_allclose(back, angles, atol=1e-7)
    np.testing.assert_allclose(
        matrix_to_euler(torch.tensor(R), convention).numpy(), back, atol=1e-9
    )


@SETTINGS
@given(q=quat, convention=st.sampled_from(["XYZ", "ZYX", "YXZ"]))
def test_matrix_euler_matrix_round_trip(q, convention):
    R = rotation(q)
    np.testing.assert_allclose(
        euler_to_matrix(matrix_to_euler(R, convention), convention), R, atol=1e-6
    )


def test_euler_gimbal_lock_still_round_trips_and_errors():
    R = euler_to_matrix(np.array([0.4, math.pi / 2, 0.3]))
    np.testing.assert_allclose(euler_to_matrix(matrix_to_euler(R)), R, atol=1e-9)
    with pytest.raises(InvalidInputError, match=r"convention must be a permutation of 'XYZ'"):
        euler_to_matrix(np.zeros(3), "XYX")
    with pytest.raises(InvalidInputError, match=r"angles must have shape \(..., 3\)"):
        euler_to_matrix(np.zeros(2))
    with pytest.raises(InvalidInputError, match=r"angles must be finite"):
        euler_to_matrix(np.array([0.0, np.inf, 0.0]))


# ---------------------------------------------------------------------------------- boxes


def test_box3d_corners_follow_omni3d_order():
    corners = g.box3d_corners(np.array([1.0, 2.0, 10.0]), np.array([4.0, 2.0, 1.5]), np.eye(3))
    local = corners - [1.0, 2.0, 10.0]
    expected = np.array(
        [
            [-2, -0.75, -1], [2, -0.75, -1], [2, 0.75, -1], [-2, 0.75, -1],
            [-2, -0.75, 1], [2, -0.75, 1], [2, 0.75, 1], [-2, 0.75, 1],
        ]
    )  # fmt: skip
    np.testing.assert_allclose(local, expected)


@SETTINGS
@given(q=quat, dims=hnp.arrays(np.float64, (3,), elements=st.floats(0.05, 20)))
def test_box3d_corners_edges_and_torch(q, dims):
    R = rotation(q)
    corners = g.box3d_corners(np.array([0.5, -1.0, 8.0]), dims, R)
    L, W, H = dims
    assert np.linalg.norm(corners[1] - corners[0]) == pytest.approx(L)
    assert np.linalg.norm(corners[4] - corners[0]) == pytest.approx(W)
    assert np.linalg.norm(corners[3] - corners[0]) == pytest.approx(H)
    np.testing.assert_allclose(corners.mean(0), [0.5, -1.0, 8.0], atol=1e-9)
    np.testing.assert_allclose(box3d_volume(corners), L * W * H, rtol=1e-9)
    t = g.box3d_corners(torch.tensor([0.5, -1.0, 8.0]), torch.tensor(dims), torch.tensor(R))
    np.testing.assert_allclose(t.numpy(), corners, rtol=1e-5, atol=1e-5)


def test_box3d_corners_errors():
    with pytest.raises(InvalidInputError, match=r"dims_lwh must be > 0 \(box sizes"):
        g.box3d_corners(np.zeros(3), np.array([1.0, 0.0, 1.0]), np.eye(3))
    with pytest.raises(InvalidInputError, match=r"center must be finite"):
        g.box3d_corners(np.array([0, np.nan, 0]), np.ones(3), np.eye(3))
    with pytest.raises(InvalidInputError, match=r"R must have shape \(..., 3, 3\)"):
        g.box3d_corners(np.zeros(3), np.ones(3), np.eye(2))


def test_box3d_dataclass():
    box = g.Box3D([0, 0, 5], [2, 1, 1.5])
    np.testing.assert_array_equal(box.R, np.eye(3))
    assert box.volume == pytest.approx(3.0)
    assert box.corners().shape == (8, 3)
    with pytest.raises(ValueError, match="read-only"):
        box.center[0] = 3.0
    with pytest.raises(AttributeError):
        box.center = np.zeros(3)  # type: ignore[misc]
    omni = g.Box3D.from_omni3d([0, 0, 5], [1.0, 1.5, 2.0], np.eye(3))  # [W, H, L]
    np.testing.assert_array_equal(omni.dims_lwh, [2.0, 1.0, 1.5])
    with pytest.raises(InvalidInputError, match=r"dims_lwh must be > 0"):
        g.Box3D([0, 0, 5], [2, -1, 1.5])
    with pytest.raises(InvalidInputError, match=r"center must have shape \(3,\), got \(2,\)"):
        g.Box3D([0, 0], [2, 1, 1.5])
    with pytest.raises(InvalidInputError, match=r"R must be a proper rotation"):
        g.Box3D([0, 0, 5], [2, 1, 1.5], np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(InvalidInputError, match=r"center must be finite"):
        g.Box3D([0, np.inf, 5], [2, 1, 1.5])


# ------------------------------------------------------------------------------------ IoU


def corners_of(center, dims, R=None):
    return g.box3d_corners(
        np.asarray(center, float), np.asarray(dims, float), np.eye(3) if R is None else R
    )


def test_iou_hand_values():
    a = corners_of([0, 0, 0], [2, 2, 2])
    assert box3d_iou(a, a) == pytest.approx(1.0, abs=1e-12)
    # shifted along x by half its length: shared faces on 4 sides -> 1/3
    assert box3d_iou(a, corners_of([1, 0, 0], [2, 2, 2])) == pytest.approx(1 / 3, abs=1e-12)
    # touching along a face, and fully apart
    assert box3d_iou(a, corners_of([2, 0, 0], [2, 2, 2])) == pytest.approx(0.0, abs=1e-12)
    assert box3d_iou(a, corners_of([5, 5, 5], [2, 2, 2])) == 0.0
    # box inside another
    assert box3d_iou(a, corners_of([0.1, 0, 0], [1, 1, 1])) == pytest.approx(1 / 8)
    # unit cube vs the same cube turned 45 deg about y: octagon prism, IoU = 1/sqrt(2)
    R45 = Rotation.from_euler("y", 45, degrees=True).as_matrix()
    iou = box3d_iou(corners_of([0, 0, 0], [1, 1, 1]), corners_of([0, 0, 0], [1, 1, 1], R45))
    assert iou == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def random_box_pairs(rng: np.random.Generator, n: int, spread: float = 0.6):
    def boxes():
        centers = rng.normal(size=(n, 3)) * spread + [0, 0, 10]
        dims = rng.uniform(0.3, 3.0, (n, 3))
        return g.box3d_corners(centers, dims, Rotation.random(n, random_state=rng).as_matrix())

    return boxes(), boxes()


def test_iou_properties_on_random_pairs():
    rng = np.random.default_rng(7)
    a, b = random_box_pairs(rng, 500)
    iou_ab = box3d_iou_batch(a, b)
    assert iou_ab.shape == (500,)
    assert ((iou_ab >= 0) & (iou_ab <= 1)).all()
    assert (iou_ab > 0.3).any() and (iou_ab == 0).any()
    np.testing.assert_allclose(box3d_iou_batch(b, a), iou_ab, atol=1e-12)  # symmetric
    np.testing.assert_allclose(box3d_iou_batch(a, a), 1.0, atol=1e-12)  # identical
    # a rigid motion applied to both boxes changes nothing
    R = Rotation.random(500, random_state=rng).as_matrix()
    t = rng.normal(size=(500, 1, 3)) * 20
    moved = box3d_iou_batch(a @ np.swapaxes(R, 1, 2) + t, b @ np.swapaxes(R, 1, 2) + t)
    np.testing.assert_allclose(moved, iou_ab, atol=1e-9)
    # disjoint: b moved far away
    assert (box3d_iou_batch(a, b + np.array([100.0, 0, 0])) == 0).all()
    # broadcasting API and torch
    assert box3d_iou(a[:3], b[0]).shape == (3,)
    out = box3d_iou(torch.tensor(a[:5]), torch.tensor(b[:5]))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), iou_ab[:5])
    out32 = box3d_iou_batch(
        torch.tensor(a[:5], dtype=torch.float32), torch.tensor(b[:5], dtype=torch.float32)
    )
    np.testing.assert_allclose(out32.numpy(), iou_ab[:5], atol=1e-5)


box_params = st.tuples(
    hnp.arrays(np.float64, (3,), elements=st.floats(-1.5, 1.5)),
    hnp.arrays(np.float64, (3,), elements=st.floats(0.1, 3.0)),
    quat,
)


@settings(max_examples=150, deadline=None)
@given(
    box_a=box_params, box_b=box_params, q=quat, shift=hnp.arrays(np.float64, (3,), elements=finite)
)
def test_iou_property_based(box_a, box_b, q, shift):
    a = corners_of(box_a[0], box_a[1], rotation(box_a[2]))
    b = corners_of(box_b[0], box_b[1], rotation(box_b[2]))
    iou = box3d_iou(a, b)
    assert 0.0 <= iou <= 1.0
    assert box3d_iou(b, a) == pytest.approx(iou, abs=1e-9)
    assert box3d_iou(a, a) == pytest.approx(1.0, abs=1e-9)
    R = rotation(q)
    assert box3d_iou(a @ R.T + shift, b @ R.T + shift) == pytest.approx(iou, abs=1e-7)


def test_iou_of_small_boxes_far_from_the_origin():
    """A 10 cm cube 1 km from the origin is a box: hypothesis found it refused as flat when the
    flatness bound was 1e-12 * (max |corner|)^3 (1e-3 m^3 there) instead of the faces' rounding."""
    small, unit = corners_of([0, 0, 0], [0.1, 0.1, 0.1]), corners_of([0, 0, 0], [1, 1, 1])
    shift = np.array([1000.0, 1000.0, 1000.0])
    assert box3d_iou(unit, small) == pytest.approx(1e-3)
    assert box3d_iou(unit + shift, small + shift) == pytest.approx(1e-3)


@settings(max_examples=100, deadline=None)
@given(
    box_a=box_params,
    axis_perm=st.permutations([0, 1, 2]),
    flips=hnp.arrays(np.float64, (3,), elements=st.sampled_from([-1.0, 1.0])),
    offset=hnp.arrays(np.float64, (3,), elements=st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0])),
)
def test_iou_with_coplanar_faces(box_a, axis_perm, flips, offset):
    """Boxes sharing face planes (offsets of half a size along the box axes): exact values.

    Box B is also written with permuted / flipped local axes (R_b = R P for a signed permutation
    P), so its faces come in another order than A's: the coplanar handling must not care.
    """
    center, dims, q = box_a
    R = rotation(q)
    ext = dims[[0, 2, 1]]  # local extents along x (L), y (H), z (W)
    local_shift = offset * ext
    P = np.zeros((3, 3))
    P[list(axis_perm), [0, 1, 2]] = flips
    P[:, 2] *= np.linalg.det(P)  # proper rotation
    ext_b = ext[list(axis_perm)]
    a = corners_of(center, dims, R)
    b = corners_of(center + R @ local_shift, ext_b[[0, 2, 1]], R @ P)
    overlap = np.clip(ext - np.abs(local_shift), 0, None).prod()
    expected = overlap / (2 * ext.prod() - overlap)
    assert box3d_iou(a, b) == pytest.approx(expected, abs=1e-9)
    assert box3d_iou(b, a) == pytest.approx(expected, abs=1e-9)


def monte_carlo_iou(a: np.ndarray, b: np.ndarray, sampler: qmc.Sobol, m: int) -> float:
    """IoU estimated from quasi-random points inside A tested against B (independent of g)."""
    basis_a = np.stack([a[1] - a[0], a[3] - a[0], a[4] - a[0]])  # rows: edge vectors
    basis_b = np.stack([b[1] - b[0], b[3] - b[0], b[4] - b[0]])
    pts = a[0] + sampler.random_base2(m) @ basis_a
    local = np.linalg.solve(basis_b.T, (pts - b[0]).T).T
    frac = np.all((local >= 0) & (local <= 1), axis=1).mean()
    vol_a, vol_b = abs(np.linalg.det(basis_a)), abs(np.linalg.det(basis_b))
    inter = frac * vol_a
    return inter / (vol_a + vol_b - inter)


def test_iou_matches_monte_carlo_on_100_random_pairs():
    """Accuracy only: speed is measured by benchmarks/bench_iou.py, not asserted here."""
    rng = np.random.default_rng(2024)
    a, b = random_box_pairs(rng, 100, spread=0.4)
    ious = box3d_iou_batch(a, b)
    sampler = qmc.Sobol(d=3, scramble=True, seed=11)
    checked = 0
    for i in range(100):
        sampler.reset()
        mc = monte_carlo_iou(a[i], b[i], sampler, 17)  # 131072 points
        if ious[i] > 0.05:
            assert ious[i] == pytest.approx(mc, rel=0.01), i
            checked += 1
        else:
            assert ious[i] == pytest.approx(mc, abs=5e-4), i
    assert checked >= 60


def halfspace_oracle_iou(a: np.ndarray, b: np.ndarray) -> float | None:
    """IoU from scipy's half-space intersection + convex hull (qhull), None where qhull gives up."""
    origin = a.mean(axis=0)
    a, b = a - origin, b - origin
    halfspaces = []
    for corners in (a, b):
        hull = ConvexHull(corners)
        halfspaces.append(hull.equations)  # rows [n, c] with n.x + c <= 0 inside
    hs = np.concatenate(halfspaces)
    # Chebyshev centre: a point strictly inside both boxes, and the depth of the intersection
    norms = np.linalg.norm(hs[:, :3], axis=1, keepdims=True)
    res = linprog(
        [0, 0, 0, -1], A_ub=np.hstack([hs[:, :3], norms]), b_ub=-hs[:, 3], bounds=[(None, None)] * 4
    )
    if res.status != 0 or res.x[3] < 1e-6:
        return 0.0 if res.status == 0 else None
    try:
        inter = ConvexHull(HalfspaceIntersection(hs, res.x[:3]).intersections).volume
    except QhullError:
        return None
    vol_a, vol_b = ConvexHull(a).volume, ConvexHull(b).volume
    return inter / (vol_a + vol_b - inter)


def test_iou_matches_halfspace_oracle_on_near_coplanar_pairs():
    """Boxes turned, resized and moved by 1e-12 .. 1e-2 from face-sharing positions, far from
    the origin too: the coplanarity tolerances must not change the answer by more than 1e-6."""
    rng = np.random.default_rng(99)
    compared = 0
    for trial in range(120):
        ca = rng.normal(size=3) + (0.0 if trial % 2 else 50.0)
        da = rng.uniform(0.2, 3, 3)
        Ra = Rotation.random(random_state=rng).as_matrix()
        eps = 10 ** rng.uniform(-12, -2)
        Rb = Ra @ Rotation.from_rotvec(rng.normal(size=3) * eps).as_matrix()
        db = da * (1 + rng.choice([0, 1]) * rng.normal(size=3) * eps)
        shift = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], 3) * da[[0, 2, 1]]
        cb = ca + Ra @ shift + rng.choice([0, 1]) * rng.normal(size=3) * eps
        a, b = corners_of(ca, da, Ra), corners_of(cb, db, Rb)
        ref = halfspace_oracle_iou(a, b)
        if ref is None:
            continue
        assert box3d_iou(a, b) == pytest.approx(ref, abs=1e-6), trial
        compared += 1
    assert compared >= 100


def test_iou_errors():
    a = corners_of([0, 0, 0], [1, 1, 1])
    with pytest.raises(
        InvalidInputError, match=r"corners_a must have shape \(..., 8, 3\), got \(7, 3\)"
    ):
        box3d_iou(a[:7], a)
    with pytest.raises(InvalidInputError, match=r"corners_b must be finite"):
        box3d_iou(a, np.full((8, 3), np.nan))
    flat = a.copy()
    flat[:, 2] = 0.0
    with pytest.raises(InvalidInputError, match=r"corners_b must describe boxes with volume > 0"):
        box3d_iou(a, flat)
    far_flat = corners_of([1000.0, 1000.0, 1000.0], [0.1, 0.1, 1e-12])
    with pytest.raises(InvalidInputError, match=r"corners_b must describe boxes with volume > 0"):
        box3d_iou(corners_of([1000.0, 1000.0, 1000.0], [0.1, 0.1, 0.1]), far_flat)
    with pytest.raises(InvalidInputError, match=r"must both have shape \(N, 8, 3\)"):
        box3d_iou_batch(a[None], np.stack([a, a]))
    with pytest.raises(InvalidInputError, match=r"do not broadcast"):
        box3d_iou(np.stack([a, a]), np.stack([a, a, a]))


def test_iou_mono3dvg_variant():
    # Mono3DVG puts (h, w, l) on (x, y, z) and ignores the rotation
    c = np.array([0.0, 0.0, 10.0])
    dims = np.array([4.0, 2.0, 1.0])  # L, W, H -> extents x=1 (H), y=2 (W), z=4 (L)
    assert box3d_iou_mono3dvg(c, dims, c + np.array([0, 0, 2.0]), dims) == pytest.approx(1 / 3)
    assert box3d_iou_mono3dvg(c, dims, c + np.array([0.5, 0, 0]), dims) == pytest.approx(1 / 3)
    assert box3d_iou_mono3dvg(c, dims, c + np.array([1.0, 0, 0]), dims) == 0.0
    batch = box3d_iou_mono3dvg(np.stack([c, c]), np.stack([dims, dims]), c, dims)
    np.testing.assert_allclose(batch, [1.0, 1.0])
    out = box3d_iou_mono3dvg(
        torch.tensor(c), torch.tensor(dims), torch.tensor(c), torch.tensor(dims)
    )
    assert isinstance(out, torch.Tensor) and out.item() == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match=r"dims_lwh_b must be > 0"):
        box3d_iou_mono3dvg(c, dims, c, np.array([1.0, 0.0, 1.0]))
    with pytest.raises(InvalidInputError, match=r"center_a must have shape \(..., 3\)"):
        box3d_iou_mono3dvg(c[:2], dims, c, dims)
