"""The dense detection heads on the HR map F: every object of every image, no language needed.

CenterNet-style (Zhou et al. 2019), on the stride-8 FPN map F (B, C, h, w) of vision.py. Each
cell predicts, for an object whose projected 3D centre falls in it:

    heatmap           1   objectness logit (focal loss against Gaussians at the object centres)
    offset            2   projected centre inside the cell, cells: u = (col + 0.5 + o_x) * stride
    box2d             4   tight 2D box: its centre relative to the projected centre, in box sizes,
                          and its log width and height in strides (the projected centre may lie
                          outside the tight box of an occluded or truncated object)
    keypoints         2   the vertical centre segment (geometry.centre_segment): its projected
                          height h = exp(k_1) * stride and midpoint v_c + k_0 * h
    depth             1   log virtual depth (or log metric depth), plus log(depth_scale)
    depth_log_scale   1   log Laplacian scale of that log-depth (MonoFlex uncertainty)
    height_log_scale  1   log Laplacian scale of the height depth of the keypoints
    dims              3   log (L, W, H) relative to the category prior (see `category_prior`)
    rot6d | euler     6|3 allocentric rotation
    category          C   logits over the training categories (detector.categories)
    color             N   logits over the colour words (detector.colors)

`cell_outputs` turns the raw values at chosen cells into the physical outputs that
decode.decode_boxes reads (the same names the MLP heads of heads.py give): the two read-outs share
one decoding. `peaks` finds the candidate objects (local maxima of the heatmap); with
detector.candidate_nms "box2d", `distinct_boxes` lets strong cells that are no maxima join them
when their 2D boxes are new.

Training targets come from the dataset (data/dataset.py `dense_targets`): a heatmap, an ignore
mask (objects whose category is held out of training: neither object nor background), and for
every supervised cell the index of its object; the object's targets are then compared with the
outputs at each of its cells (its centre cell and the neighbours inside its box).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch idiom)
from torch import nn

from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.losses import box_iou_2d

HEATMAP_PRIOR = 0.1  # initial objectness probability (CenterNet initialises the bias to -2.19)
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def output_widths(config: ModelConfig) -> dict[str, int]:
    """Names and widths of the dense outputs this config needs (module docstring)."""
    widths = {"heatmap": 1, "offset": 2, "box2d": 4, "keypoints": 2}
    if config.high_res.depth_branch:
        widths.update(depth=1, depth_log_scale=1)
    widths.update(height_log_scale=1, dims=3)
    widths.update({"rot6d": 6} if config.heads.rotation == "6d" else {"euler": 3})
    if config.detector.categories:
        widths["category"] = len(config.detector.categories)
    if config.detector.colors:
        widths["color"] = len(config.detector.colors)
    return widths


SEMANTIC_OUTPUTS = ("heatmap", "category", "color")


def _tower(channels: int) -> nn.Sequential:
    """Three 3x3 convs, the middle one dilated: a wider view of big objects.

    Measured against two plain convs: boxes with 2D IoU > 0.5 at the object's own cell 72 % ->
    75 %, Acc@0.25 there 23 % -> 24 %.
    """
    layers: list[nn.Module] = []
    for dilation in (1, 2, 1):
        layers += [nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation), nn.GELU()]
    return nn.Sequential(*layers)


class DenseHeads(nn.Module):
    """Two conv towers (what an object is / where and how big it is) and 1x1 outputs."""

    def __init__(self, channels: int, config: ModelConfig) -> None:
        super().__init__()
        self.widths = output_widths(config)
        self.semantic = _tower(channels)
        self.geometric = _tower(channels)
        self.outputs = nn.ModuleDict(
            {name: nn.Conv2d(channels, width, 1) for name, width in self.widths.items()}
        )
        heat = self.outputs["heatmap"]
        assert isinstance(heat, nn.Conv2d) and heat.bias is not None
        nn.init.constant_(heat.bias, math.log(HEATMAP_PRIOR / (1 - HEATMAP_PRIOR)))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """F (B, C, h, w) -> raw maps {name: (B, width, h, w)}."""
        semantic, geometric = self.semantic(features), self.geometric(features)
        return {
            name: conv(semantic if name in SEMANTIC_OUTPUTS else geometric)
            for name, conv in self.outputs.items()
        }


def gather_cells(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Values of maps (B, k, h, w) at flat cell indices (B, N) -> (B, N, k)."""
    flat = maps.flatten(2)  # (B, k, h*w)
    index = cells.unsqueeze(1).expand(-1, flat.shape[1], -1)  # (B, k, N)
    return flat.gather(2, index).transpose(1, 2)


def values_at(maps: torch.Tensor, rows: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Values of maps (B, k, h, w) at n (row, flat cell) pairs -> (n, k)."""
    return maps.flatten(2).transpose(1, 2)[rows, cells]


def peaks(heatmap: torch.Tensor, k: int, kernel: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The k strongest local maxima of heatmap logits (B, 1, h, w).

    Returns:
        cells (B, k) flat indices (row-major) and their logits (B, k), strongest first. When the
        map has fewer than k local maxima, the remaining slots hold the next-strongest cells.
    """
    flat = heatmap.flatten(1)
    # non-peaks sort after every peak but keep their order among themselves
    ranked = torch.where(local_maxima(heatmap, kernel), flat, flat - 1e4)  # (B, h*w)
    k = min(k, ranked.shape[1])
    _, cells = ranked.topk(k, dim=1)
    return cells, flat.gather(1, cells)


def local_maxima(heatmap: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Which cells of heatmap logits (B, 1, h, w) top their kernel x kernel window: (B, h * w).

    CenterNet's peaks; the flat cell order is row-major.
    """
    pooled = F.max_pool2d(heatmap, kernel, stride=1, padding=kernel // 2)
    return (heatmap >= pooled).flatten(1)


def distinct_boxes(
    boxes: torch.Tensor, k: int, max_iou: float, protected: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy 2D non-maximum suppression of boxes (B, P, 4) xyxy ranked best first -> (B, k).

    The indices of the first k boxes whose IoU with every box kept before them is at most
    `max_iou`, in rank order; a `protected` box (B, P) bool is kept whatever it overlaps. When
    fewer are left, the best of the dropped ones fill the slots (as `peaks` fills them with
    non-peaks). Hand-written: torchvision's nms is not a dependency.
    """
    B, P = boxes.shape[:2]
    k = min(k, P)
    ious = box_iou_2d(boxes.float().unsqueeze(2), boxes.float().unsqueeze(1))  # (B, P, P)
    if protected is None:
        protected = torch.zeros(B, P, dtype=torch.bool, device=boxes.device)
    chosen = []
    for image in range(B):
        dropped = torch.zeros(P, dtype=torch.bool, device=boxes.device)
        kept: list[int] = []
        for index in range(P):
            if len(kept) == k:
                break
            if bool(protected[image, index]) or not bool(dropped[index]):
                kept.append(index)
                dropped |= ious[image, index] > max_iou
        fill = [index for index in range(P) if index not in kept][: k - len(kept)]
        chosen.append(torch.tensor(kept + fill, dtype=torch.long, device=boxes.device))
    return torch.stack(chosen)


@dataclass
class CellGrid:
    """Where the cells of the dense map are: stride (px) and map size (h, w), canvas (W, H) px."""

    stride: float
    height: int
    width: int
    canvas_w: float
    canvas_h: float

    def centres_px(self, cells: torch.Tensor) -> torch.Tensor:
        """Flat cell indices (...) -> (..., 2) canvas px of the cell centres."""
        row = torch.div(cells, self.width, rounding_mode="floor")
        col = cells - row * self.width
        return (torch.stack([col, row], dim=-1).to(torch.float32) + 0.5) * self.stride

    def cell_of(self, points_px: torch.Tensor) -> torch.Tensor:
        """(..., 2) canvas px -> flat index of the cell holding each point (clamped to the map)."""
        col = (points_px[..., 0] / self.stride).floor().clamp(0, self.width - 1).long()
        row = (points_px[..., 1] / self.stride).floor().clamp(0, self.height - 1).long()
        return row * self.width + col


def category_prior(category_logits: torch.Tensor | None, log_priors: torch.Tensor) -> torch.Tensor:
    """Expected log dimension prior under the predicted category distribution.

    Args:
        category_logits: (..., C) or None (no category head).
        log_priors: (C + 1, 3) log mean (L, W, H) per training category, the last row over all
            training objects (the global prior, used without a category head).

    Returns:
        (..., 3) log prior; the dims output is exp(prior + raw).
    """
    if category_logits is None or category_logits.shape[-1] == 0:
        return log_priors[-1]
    probs = category_logits.float().softmax(dim=-1)
    return probs @ log_priors[:-1].float()  # float32 also when the model runs in bfloat16


def cell_outputs(
    raw: dict[str, torch.Tensor],
    cells: torch.Tensor,
    grid: CellGrid,
    log_priors: torch.Tensor,
    config: ModelConfig,
) -> dict[str, torch.Tensor]:
    """Raw dense values at cells -> physical outputs (the names decode.decode_boxes reads).

    Args:
        raw: {name: (B, N, width)} gathered with `gather_cells`.
        cells: (B, N) the flat indices they were read at.
        grid: the cell layout.
        log_priors: (C + 1, 3), see `category_prior`.
        config: the model config.

    Returns:
        {name: (B, N, k)}: center_uv (normalised canvas u, v), box2d (normalised xyxy),
        keypoints (normalised v_top, v_bottom), depth, depth_log_scale, height_log_scale, dims
        (m), rot6d / euler, objectness_logit, category / color logits.
    """
    size = raw["offset"].new_tensor([grid.canvas_w, grid.canvas_h])
    stride = grid.stride
    centre_px = grid.centres_px(cells).to(raw["offset"]) + raw["offset"] * stride  # (B, N, 2)
    box_size = raw["box2d"][..., 2:].clamp(max=8.0).exp() * stride  # (B, N, 2) w, h
    box_centre = centre_px + raw["box2d"][..., :2] * box_size
    box_px = torch.cat([box_centre - box_size / 2, box_centre + box_size / 2], dim=-1)
    h_px = raw["keypoints"][..., 1:2].clamp(max=8.0).exp() * stride  # (B, N, 1)
    mid = centre_px[..., 1:2] + raw["keypoints"][..., 0:1] * h_px
    out = {
        "center_uv": centre_px / size,
        "box2d": box_px / size.repeat(2),
        "keypoints": torch.cat([mid - h_px / 2, mid + h_px / 2], dim=-1) / size[1],
        "height_log_scale": raw["height_log_scale"],
        "objectness_logit": raw["heatmap"],
    }
    if "depth" in raw:
        out["depth"] = (raw["depth"].clamp(max=8.0)).exp() * config.heads.depth_scale
        out["depth_log_scale"] = raw["depth_log_scale"]
    prior = category_prior(raw.get("category"), log_priors).to(raw["dims"])
    out["dims"] = (raw["dims"] + prior).clamp(max=6.0).exp()
    if "rot6d" in raw:
        out["rot6d"] = raw["rot6d"] + raw["rot6d"].new_tensor(IDENTITY_6D)
    else:
        out["euler"] = raw["euler"]
    for name in ("category", "color"):
        if name in raw:
            out[name] = raw[name]
    return out


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor, num_objects: torch.Tensor
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4) on heatmap logits.

    Args:
        logits: (B, 1, h, w) heatmap logits.
        target: (B, 1, h, w) Gaussian target in [0, 1], 1 at object centres.
        ignore: (B, 1, h, w) bool, cells that count neither as object nor as background.
        num_objects: scalar, objects in the batch (the normaliser, at least 1).

    Returns:
        Scalar loss.
    """
    logits = logits.float()
    prob = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = target >= 1.0 - 1e-4
    pos_loss = -F.logsigmoid(logits) * (1 - prob) ** 2
    neg_loss = -F.logsigmoid(-logits) * prob**2 * (1 - target) ** 4
    loss = torch.where(positive, pos_loss, neg_loss)
    loss = loss.masked_fill(ignore & ~positive, 0.0)
    return loss.sum() / num_objects.clamp(min=1.0)


__all__ = [
    "CellGrid",
    "DenseHeads",
    "category_prior",
    "cell_outputs",
    "focal_loss",
    "gather_cells",
    "output_widths",
    "peaks",
    "values_at",
]
