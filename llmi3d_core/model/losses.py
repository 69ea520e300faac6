"""Training losses of LLMI3D: L1 on the regression heads and the depth map, CE on answer text.

Every term is a mean over the batch; `total` is their sum weighted by LossConfig. Depth-like terms
(depth head, xyz head, depth map) are divided by heads.depth_scale first so that all L1 terms are
of order one. The score head is trained with binary cross-entropy towards a detached quality
q = IoU2D(box2d, gt box2d) * exp(-|log(Z / Z_gt)|) in [0, 1] (see heads.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch idiom)

from llmi3d_core import geometry
from llmi3d_core.model.config import ModelConfig

Batch = dict[str, Any]

# head name -> its target in physical units, from the collated batch (data/dataset.py contract)
TARGETS: dict[str, Callable[[Batch, ModelConfig], torch.Tensor]] = {
    "center_uv": lambda b, c: b["center_uv"],
    "depth": lambda b, c: (
        b["virtual_depth"] if c.heads.use_virtual_depth else b["center_cam"][:, 2:]
    ),
    "xyz": lambda b, c: b["center_cam"],
    "rot6d": lambda b, c: b["rot6d_allo"],
    "euler": lambda b, c: geometry.matrix_to_euler(
        geometry.rotation_6d_to_matrix(b["rot6d_allo"], validate=False), validate=False
    ),
    "dims": lambda b, c: b["dims_lwh"],
    "box2d": lambda b, c: b["box2d"],
}

# head name -> (LossConfig field, divide by depth_scale)
LOSS_TERMS: dict[str, tuple[str, bool]] = {
    "center_uv": ("center_uv", False),
    "depth": ("depth", True),
    "xyz": ("depth", True),
    "rot6d": ("rotation", False),
    "euler": ("rotation", False),
    "dims": ("dims", False),
    "box2d": ("box2d", False),
}


def has_targets(batch: Batch) -> bool:
    """True when the batch carries the regression targets (training / evaluation batches)."""
    return "dims_lwh" in batch


def regression_targets(
    batch: Batch, names: list[str], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """Targets {head name: (B, k)} for the heads in `names` that have one."""
    return {name: TARGETS[name](batch, config) for name in names if name in TARGETS}


def regression_losses(
    outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """L1 per loss term (unweighted), keyed by LossConfig field names."""
    losses: dict[str, torch.Tensor] = {}
    for name, target in targets.items():
        term, scaled = LOSS_TERMS[name]
        pred = outputs[name].float()
        scale = config.heads.depth_scale if scaled else 1.0
        losses[term] = F.l1_loss(pred / scale, target.to(pred) / scale)
    return losses


def depth_map_loss(pred: torch.Tensor, target: torch.Tensor, depth_scale: float) -> torch.Tensor:
    """L1 between the predicted and pseudo depth maps where the target is > 0 (object pixels).

    Args:
        pred: (B, 1, h, w) predicted depth map (virtual-depth units), any resolution.
        target: (B, 1, H_t, W_t) pseudo map, 0 = background.
        depth_scale: both are divided by it.

    Returns:
        Scalar; 0 (with a graph) when no pixel is labelled.
    """
    pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    mask = target > 0
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return F.l1_loss(pred[mask] / depth_scale, target.to(pred)[mask] / depth_scale)


def box_iou_2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of axis-aligned boxes (B, 4) xyxy and (B, 4) xyxy -> (B,)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=1e-9)


def quality_target(
    box2d: torch.Tensor, gt_box2d: torch.Tensor, z: torch.Tensor, gt_z: torch.Tensor
) -> torch.Tensor:
    """Detached box quality in [0, 1]: 2D IoU times depth-ratio agreement. Shapes (B, 4), (B,)."""
    ratio = (z.clamp(min=1e-6) / gt_z.clamp(min=1e-6)).log().abs()
    return (box_iou_2d(box2d, gt_box2d) * torch.exp(-ratio)).detach()


def score_loss(score_logit: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """BCE of the score head (B, 1) towards the quality (B,)."""
    return F.binary_cross_entropy_with_logits(score_logit[:, 0].float(), quality.to(torch.float32))


def weighted_total(losses: dict[str, torch.Tensor], config: ModelConfig) -> torch.Tensor:
    """Sum of the terms weighted by LossConfig (field name = term name)."""
    weights = config.loss
    return sum(
        (getattr(weights, name) * value for name, value in losses.items()),
        start=torch.zeros((), device=next(iter(losses.values())).device),
    )
