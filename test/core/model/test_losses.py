"""The training losses (losses.py): hand values, the rotation symmetry, perfect outputs cost 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from llmi3d_core import rotation
from llmi3d_core.model import get_preset
from llmi3d_core.model.losses import (
    box_iou_2d,
    box_losses,
    box_targets,
    laplacian_nll,
    quality_target,
    symmetric_rotation_l1,
    weighted_total,
)


def _yaw(angle: float) -> torch.Tensor:
    """Rotation about the box's own vertical (local y) axis, (3, 3) float64."""
    return torch.from_numpy(Rotation.from_euler("y", angle).as_matrix())


def test_rotation_loss_ignores_a_half_turn_about_the_vertical_axis():
    rng = np.random.default_rng(0)
    R = torch.from_numpy(Rotation.random(8, random_state=rng).as_matrix())  # (8, 3, 3)
    target = rotation.matrix_to_rotation_6d(R)
    half_turn = rotation.matrix_to_rotation_6d(R @ _yaw(math.pi))  # the same box, turned
    quarter = rotation.matrix_to_rotation_6d(R @ _yaw(math.pi / 2))
    assert torch.allclose(
        symmetric_rotation_l1(half_turn, target), torch.zeros(8, dtype=torch.float64), atol=1e-12
    )
    assert torch.allclose(
        symmetric_rotation_l1(target, target), torch.zeros(8, dtype=torch.float64), atol=1e-12
    )
    assert bool((symmetric_rotation_l1(quarter, target) > 0.1).all())
    # a half turn about another axis is a different box
    flipped = rotation.matrix_to_rotation_6d(R @ torch.from_numpy(np.diag([1.0, -1.0, -1.0])))
    assert bool((symmetric_rotation_l1(flipped, target) > 0.1).all())
    # hand value: identity against a 90-degree yaw, 6D rows (1,0,0,0,1,0) vs (0,0,1,0,1,0)
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    turned = rotation.matrix_to_rotation_6d(_yaw(math.pi / 2))[None]
    assert symmetric_rotation_l1(turned, identity).item() == pytest.approx(2.0 / 6.0)


def test_laplacian_nll_hand_values_and_gradients():
    pred = torch.tensor([math.log(12.0), math.log(8.0)], requires_grad=True)
    target = torch.log(torch.tensor([10.0, 10.0]))
    log_scale = torch.zeros(2, requires_grad=True)
    error = torch.log(torch.tensor([1.2, 1.25]))
    # s = 0: |e| + |e| e^0 + 0, mean over the two
    loss = laplacian_nll(pred, target, log_scale)
    assert loss.item() == pytest.approx(float((2 * error.abs()).mean()), rel=1e-6)
    loss.backward()
    # the prediction learns with a plain L1, whatever the predicted scale
    assert pred.grad.tolist() == pytest.approx([0.5, -0.5])
    # the scale is at its optimum where exp(s) = |e|
    best = error.abs().log().clone().requires_grad_(True)
    laplacian_nll(pred.detach(), target, best).backward()
    assert best.grad.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    # scales are clamped to a sane range (+-6): no reward for ever smaller scales
    tiny = laplacian_nll(pred.detach(), target, torch.full((2,), -50.0))
    assert tiny.item() == pytest.approx(float((error.abs() * (1 + math.exp(6.0)) - 6.0).mean()))


def test_box_iou_2d_and_quality_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert box_iou_2d(a, b).item() == pytest.approx(1.0 / 7.0)
    assert box_iou_2d(a, a).item() == pytest.approx(1.0)
    quality = quality_target(a, a, torch.tensor([20.0]), torch.tensor([10.0]))
    assert quality.item() == pytest.approx(0.5) and not quality.requires_grad


def test_perfect_box_outputs_cost_nothing(make_batch):
    """The targets themselves, as outputs with zero log scales, give 0 on every term."""
    config = get_preset("tiny")
    batch = make_batch(config, size=6, query_types=("caption", "box_prompt", "point_prompt"))
    targets = box_targets(batch, config)
    zeros = torch.zeros(6, 1)
    outputs = {name: targets[name].clone() for name in ("center_uv", "depth", "dims", "rot6d",
                                                        "box2d", "keypoints")}  # fmt: skip
    outputs.update(depth_log_scale=zeros, height_log_scale=zeros)
    losses = box_losses(outputs, targets, config)
    assert set(losses) == {"center_uv", "depth", "dims", "rotation", "box2d", "keypoints"}
    for name, value in losses.items():
        assert value.item() == pytest.approx(0.0, abs=2e-4), name
    # errors are measured in the units the docstring names
    shifted = dict(outputs, center_uv=outputs["center_uv"] + 8.0 / targets["image_size"])
    assert box_losses(shifted, targets, config)["center_uv"].item() == pytest.approx(1.0)
    doubled = dict(outputs, dims=outputs["dims"] * 2.0)
    assert box_losses(doubled, targets, config)["dims"].item() == pytest.approx(math.log(2.0))


def test_weighted_total_uses_the_loss_config():
    losses = {"depth": torch.tensor(2.0), "pointer": torch.tensor(3.0), "text": torch.tensor(1.0)}
    config = get_preset("tiny")
    assert weighted_total(losses, config).item() == pytest.approx(6.0)
    halved = config.replace(**{"loss.depth": 0.5, "loss.text": 0.0})
    assert weighted_total(losses, halved).item() == pytest.approx(4.0)
