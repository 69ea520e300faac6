"""The detector's candidate objects: what the pointer chooses among and the object tokens show.

Candidates are the dense heads' physical outputs at K cells of the stride-8 map, decoded into
boxes and described by a feature vector (pointer.py), and what the pointer reads of them
(`pointer_inputs`). Training puts every target among them (teacher forcing); `locate` ranks
them by the pointer's calibrated scores (located.py).

A box prompt adds one candidate of its own to its query (`box_prompt_cell`): the user has said
where the object is, and the detector's K peaks may miss it or box it loosely. Measured on the
default model (test, 200 single-target box prompts, always answering): 16 % chose the target with
a 2D box too loose to match it (2D IoU 0.2-0.5), 5.5 % had no candidate on it. The candidate is
read at the strongest heatmap cell in the middle of the box and keeps the prompt as its 2D box
(corrected from a crop when the crop heads are fitted, as every candidate's is). Point prompts
get none: a candidate at the strongest peak whose box holds the point, scored like the pointer's
prompt prior, changed nothing (79.5 % grounded either way), as a point does not say the extent.
Nor a candidate seeded by a box centred on the point (as large as the smallest, or the median,
of the candidates whose boxes hold it) and corrected from its crop once or twice, like a box
prompt's (2026-12-05, test, 200 point prompts, always answering): 153 / 160 / 161 grounded
against 164; the pointer prefers the centred candidate where it is a loose box.

Nor did telling which candidate the point's pixel shows (2026-12-04, not kept; val, 285 point
prompts, 77.2 % grounded by the landed model). A mask head on the crop heads (which of 6 x 6
cells of a crop show its object, learned from the renderer's visible pixels of each object; at
best 90 % of val cells right, against 72 % for "none") whose logit at the point joined the
prompt term grounded 75.8, 77.2 and 75.4 % (three head designs, each retrained). Of the
candidates whose boxes hold the point, the last design's mask said "mine" for 76 % of those that
match the target (2D IoU > 0.5), 28 % of other objects (IoU < 0.3) and 54 % of loose boxes (IoU
0.3-0.5): the pointer already tells distinct objects apart; what is left is mostly loose or
duplicate boxes. The nearest of the boxes holding the point (the occluder) matched the target on
only 67 %; as an added term it gained at most 1 point.
"""

from __future__ import annotations

from typing import Any

import torch

from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.decode import decode_boxes
from llmi3d_core.model.detector import CellGrid
from llmi3d_core.model.outputs import Candidates, QueryStates
from llmi3d_core.model.pointer import PointerInputs, candidate_geometry
from llmi3d_core.model.positions import fourier_encoding


def _flatten(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: (B, K, k)} -> {name: (B * K, k)}."""
    return {k: v.reshape(-1, v.shape[-1]) for k, v in outputs.items()}


def _repeat(values: torch.Tensor, count: int) -> torch.Tensor:
    """(B, ...) -> (B * count, ...), each row repeated `count` times in place."""
    return values.repeat_interleave(count, dim=0)


def candidates_from_outputs(
    outputs: dict[str, torch.Tensor],
    feature_at: torch.Tensor,
    cells: torch.Tensor,
    K: torch.Tensor,
    image_size: torch.Tensor,
    *,
    dense_config: ModelConfig,
) -> Candidates:
    """Candidates from the physical outputs (B, N, k) and F (B, N, C) at their cells (B, N).

    `dense_config` decodes the dense heads' outputs (their location is always "uv_depth").
    """
    B, N = cells.shape
    flat = _flatten({k: v.float() for k, v in outputs.items()})
    boxes = decode_boxes(flat, _repeat(K.float(), N), _repeat(image_size.float(), N), dense_config)
    boxes = {k: v.reshape(B, N, *v.shape[1:]) for k, v in boxes.items()}
    parts = [feature_at, fourier_encoding(outputs["center_uv"].float()).to(feature_at)]
    for name in ("category", "color"):
        if name in outputs:
            parts.append(outputs[name].float().softmax(-1).to(feature_at))
    parts += [
        outputs["objectness_logit"].to(feature_at),
        outputs["dims"].clamp(min=1e-3).log().to(feature_at),
    ]
    return Candidates(
        cells=cells,
        outputs=outputs,
        boxes=boxes,
        features=torch.cat(parts, dim=-1),
        geometry=candidate_geometry(
            outputs["center_uv"].float(), boxes["z"], boxes["dims"], outputs["box2d"].float()
        ),
        objectness=outputs["objectness_logit"][..., 0],
        valid=torch.ones(B, N, dtype=torch.bool, device=cells.device),
    )


def corrected(outputs: dict[str, torch.Tensor], residual: torch.Tensor) -> dict[str, torch.Tensor]:
    """Apply the pointer's residual (..., 4) to log depth and log (L, W, H) of `outputs`."""
    out = dict(outputs)
    if "depth" in out:
        out["depth"] = out["depth"] * residual[..., :1].float().exp()
    out["dims"] = out["dims"] * residual[..., 1:4].float().exp()
    return out


def target_slots(batch: dict[str, Any], cells: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: candidate cells the dense targets assign to one of the query's targets."""
    assign = batch["assign"].to(cells.device)  # (B, h*w)
    owner = assign.gather(1, cells)  # (B, K), -1: no object
    targets: torch.Tensor = batch["target_mask"].to(cells.device)  # (B, M)
    slots: torch.Tensor = targets.gather(1, owner.clamp(min=0)) & (owner >= 0)
    return slots


def inject_missing_targets(
    batch: dict[str, Any], cells: torch.Tensor, grid: CellGrid, image_size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Candidate cells (B, K) where every target without a candidate takes one of the last slots.

    Returns the new cells and the (B, K) slots given to a target, or None when the detector
    found every target (a target's centre cell, or a neighbour the dense targets assign to it).
    """
    assign = batch["assign"].to(cells.device)
    owner = assign.gather(1, cells)  # (B, K)
    targets: torch.Tensor = batch["target_mask"].to(cells.device)  # (B, M)
    M = targets.shape[1]
    # (B, M): object m owns a candidate (a scatter of owner >= 0 would let the -1 slots,
    # clamped to object 0, overwrite object 0's True: duplicate indices, last write wins)
    found = (owner[:, None, :] == torch.arange(M, device=owner.device)[None, :, None]).any(-1)
    missing = targets & ~found  # (B, M)
    if not bool(missing.any()):
        return None
    centres = batch["obj_center_uv"].to(cells.device, torch.float32)  # (B, M, 2)
    object_cells = grid.cell_of(centres * image_size[:, None, :])  # (B, M)
    cells = cells.clone()
    injected = torch.zeros(cells.shape, dtype=torch.bool, device=cells.device)
    K = cells.shape[1]
    for row, column in zip(*torch.nonzero(missing, as_tuple=True), strict=True):
        slot = K - 1 - int(injected[row].sum())
        if slot < 0 or int(column) >= M:
            continue
        cells[row, slot] = object_cells[row, column]
        injected[row, slot] = True
    return cells, injected


# A box prompt's candidate is read at a cell whose centre lies within this fraction of the box's
# size from its centre (the middle half): its own object's peak, not a neighbour's at the edge.
BOX_PROMPT_INNER = 0.25


def box_prompt_cell(heatmap: torch.Tensor, grid: CellGrid, box_px: torch.Tensor) -> int:
    """The flat cell of a box prompt's object: heatmap (h*w,) logits, box (4,) canvas px xyxy.

    The strongest cell whose centre lies in the middle of the box; the cell of the box's centre
    when no cell centre does (a box smaller than a cell).
    """
    centres = grid.centres_px(torch.arange(heatmap.numel(), device=heatmap.device))  # (h*w, 2)
    middle = (box_px[:2] + box_px[2:]) / 2
    half = (box_px[2:] - box_px[:2]).clamp(min=0) * BOX_PROMPT_INNER
    inside = ((centres - middle).abs() <= half).all(dim=-1)
    if not bool(inside.any()):
        return int(grid.cell_of(middle))
    return int(heatmap.float().masked_fill(~inside, float("-inf")).argmax())


def pointer_inputs(
    states: QueryStates,
    candidates: Candidates,
    box_prompt: torch.Tensor,
    point_prompt: torch.Tensor,
) -> PointerInputs:
    """What the pointer reads of queries' states, their images' candidates and their prompts."""
    device = states.f3d.device
    outputs = candidates.outputs
    return PointerInputs(
        f3d=states.f3d,
        words=states.words,
        word_mask=states.word_mask,
        features=candidates.features,
        geometry=candidates.geometry,
        objectness=candidates.objectness,
        valid=candidates.valid,
        box_prompt=box_prompt.to(device, torch.float32),
        point_prompt=point_prompt.to(device, torch.float32),
        category_probs=outputs["category"].float().softmax(-1) if "category" in outputs else None,
        color_probs=outputs["color"].float().softmax(-1) if "color" in outputs else None,
    )
