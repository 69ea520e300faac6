"""Which outputs of LLMI3D meet which targets of a collated batch (data/dataset.py).

The loss functions themselves are in losses.py, detector.py and pointer.py; this module picks
their inputs: the dense heads at every object's cells (`dense_losses`), the pointer's corrected
outputs at the queried target (`residual_loss`) and the category / colour the query names
(`text_losses`), and the MLP read-out's one box (`mlp_readout_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmi3d_core.model.candidates import corrected
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.detector import CellGrid, cell_outputs, focal_loss, values_at
from llmi3d_core.model.losses import box_losses, box_targets, quality_target, score_loss
from llmi3d_core.model.outputs import Candidates, ImageFeatures
from llmi3d_core.model.pointer import PointerOutput


@dataclass
class ObjectCells:
    """The cells the dense targets assign to an object, over the batch's images.

    Attributes:
        rows: (M,) the image of each cell.
        cells: (M,) flat cell index in its image's stride-8 map.
        objects: (M,) the object (index into the batch's obj_* fields) the cell belongs to.
        raw: the raw dense head values there {name: (M, 1, k)}.
    """

    rows: torch.Tensor
    cells: torch.Tensor
    objects: torch.Tensor
    raw: dict[str, torch.Tensor]


def dense_losses(
    batch: dict[str, Any],
    features: ImageFeatures,
    grid: CellGrid,
    *,
    log_priors: torch.Tensor,
    config: ModelConfig,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], ObjectCells | None]:
    """The heatmap loss, and the box / category / colour losses on every object's cells.

    Returns the losses and the objects' cells (None when the batch has no object).
    """
    dense = features.dense
    assert dense is not None
    heat = batch["heatmap"].to(device)
    ignore = batch["heat_ignore"].to(device)
    valid = batch["obj_valid"].to(device)
    losses = {"heatmap": focal_loss(dense["heatmap"], heat, ignore, valid.sum().float())}
    assign = batch["assign"].to(device)  # (B, h*w)
    rows, cells = torch.nonzero(assign >= 0, as_tuple=True)
    if rows.numel() == 0:
        return losses, None
    objects = assign[rows, cells]
    raw = {name: values_at(m, rows, cells)[:, None, :] for name, m in dense.items()}
    outputs = cell_outputs(raw, cells[:, None], grid, log_priors, config)
    outputs = {k: v[:, 0] for k, v in outputs.items()}

    def obj(key: str) -> torch.Tensor:
        values: torch.Tensor = batch[f"obj_{key}"].to(device)
        return values[rows, objects]

    targets = {
        "center_uv": obj("center_uv"),
        "depth": (
            obj("virtual_depth")[:, None] if config.heads.use_virtual_depth
            else obj("center_cam")[:, 2:]
        ),
        "dims": obj("dims_lwh"),
        "rot6d": obj("rot6d_allo"),
        "box2d": obj("box2d"),
        "keypoints": obj("keypoints"),
        "center_cam": obj("center_cam"),
        "R_cam": obj("R_cam"),
        "K": features.K[rows],
        "image_size": features.image_size[rows],
    }  # fmt: skip
    losses.update(box_losses(outputs, targets, config))
    for name in ("category", "color"):
        if name in outputs:
            labels = obj(name)
            if bool((labels >= 0).any()):
                losses[name] = nn.functional.cross_entropy(
                    outputs[name].float(), labels, ignore_index=-1
                )
    return losses, ObjectCells(rows=rows, cells=cells, objects=objects, raw=raw)


def text_losses(pointed: PointerOutput, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Cross-entropy of what the query's words name (pointer.py), for the heads present.

    text_category / text_color: the target's category and colour. text_relation: the spatial
    relation; text_anchor: the anchors' categories and colours (spatial_relations.py). Labels
    of -1 (a relation the dataset does not record, a query without a second anchor) add nothing.
    """
    losses: dict[str, torch.Tensor] = {}
    for name, key, logits in (
        ("text_category", "query_category", pointed.category_logits),
        ("text_color", "query_color", pointed.color_logits),
        ("text_relation", "query_relation", pointed.relation_logits),
        ("text_anchor", "anchor_category", pointed.anchor_category_logits),
        ("text_anchor", "anchor_color", pointed.anchor_color_logits),
    ):
        if logits is None or key not in batch:
            continue
        target = batch[key].to(logits.device).reshape(-1)
        flat = logits.float().reshape(target.shape[0], -1)
        labelled = target >= 0
        term = (
            nn.functional.cross_entropy(flat[labelled], target[labelled])
            if bool(labelled.any())
            else flat.sum() * 0.0
        )
        losses[name] = losses[name] + term if name in losses else term
    return losses


def residual_loss(
    batch: dict[str, Any],
    candidates: Candidates,
    residual: torch.Tensor,
    is_target: torch.Tensor,
    config: ModelConfig,
) -> torch.Tensor:
    """Depth and size loss of the corrected outputs at the first target's slot.

    Queries without a target (negatives) and multi-target queries (whose fields describe
    only their first target) add nothing.
    """
    single = is_target.any(dim=-1) & (batch["target_mask"].to(is_target.device).sum(-1) == 1)
    if not bool(single.any()):
        return residual.sum() * 0.0
    rows = torch.nonzero(single, as_tuple=True)[0]
    slot = is_target[rows].float().argmax(dim=-1)
    at_target = corrected(
        {k: v[rows, slot] for k, v in candidates.outputs.items()}, residual[rows, slot]
    )
    targets = {k: v[rows] for k, v in box_targets(batch, config).items()}
    terms = box_losses(at_target, targets, config)
    return terms.get("depth", terms["dims"] * 0.0) + terms["dims"]


def mlp_readout_losses(
    batch: dict[str, Any],
    outputs: dict[str, torch.Tensor],
    boxes: dict[str, torch.Tensor],
    config: ModelConfig,
) -> dict[str, torch.Tensor]:
    """Box and score losses of the MLP read-out's (B, k) outputs and their decoded boxes.

    The paper's read-out regresses one box: single-target queries teach it, and its score
    learns that a query without a single target has no good box.
    """
    device = outputs["score_logit"].device
    single = batch["target_mask"].to(device).sum(-1) == 1
    if not bool(single.any()):
        return {}
    rows = torch.nonzero(single, as_tuple=True)[0]
    targets = {k: v[rows] for k, v in box_targets(batch, config).items()}
    losses = dict(box_losses({k: v[rows] for k, v in outputs.items()}, targets, config))
    gt_z = batch["center_cam"][:, 2].to(device, torch.float32)
    quality = (
        quality_target(outputs["box2d"], batch["box2d"].to(device, torch.float32), boxes["z"], gt_z)
        * single.float()
    )
    losses["score"] = score_loss(outputs["score_logit"], quality)
    return losses
