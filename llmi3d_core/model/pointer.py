"""Spatial pointer: F_3D picks the image token that holds the object (our addition to paper III-C).

The paper regresses the projected centre (u, v) from F_3D with an MLP alone. At the budgets this
package trains on (a CPU, minutes) that never learned *where* the object is: the centre error
stayed at the "always the image centre" level (issue 6). The pointer gives the heads a direct
path to location:

    a_i   = (W_q F_3D) . (W_k t_i + P(c_i)) / sqrt(d)      over the N' image tokens t_i
    p     = softmax(a)
    uv_p  = sum_i p_i c_i                                   c_i: normalised centre of token i's cell
    d_p   = sum_i p_i D(c_i)                                D: the depth branch's object depth map
    F'_3D = F_3D + W_o sum_i p_i W_v t_i                    the object's own features, for the heads

The heads then predict (u, v) = uv_p + offset, the 2D box around uv_p and the virtual depth as a
correction of d_p (heads.py): the dense depth map is trained on every object of every image,
far more supervision than the one box of a query. The auxiliary loss (`pointer_loss`) is
cross-entropy of p towards the cell holding the true centre.
P is a Fourier encoding of c_i, so relations ("left of") can prefer a part of the image.
`heads.pointer: false` gives the paper's plain MLP read-out (an ablation config).

Token layout: the fusion gives N' = k * g^2 tokens, k row-major g x g grids one after the other
(k = 2 for the "concat" fusion); every grid covers the whole (resized) image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch idiom)
from torch import nn

FOURIER_FREQUENCIES = (1.0, 2.0, 4.0, 8.0)


@dataclass
class PointerOutput:
    """What the pointer gives the heads.

    Attributes:
        logits: (B, N') pointer logits over the image tokens.
        uv: (B, 2) expected normalised (u, v) of the pointed cell centres.
        features: (B, hidden) F'_3D, F_3D plus the pooled features of the pointed tokens.
        depth: (B, 1) depth map at the pointed cells (virtual-depth units), or None without one.
    """

    logits: torch.Tensor
    uv: torch.Tensor
    features: torch.Tensor
    depth: torch.Tensor | None = None


def map_centres(h: int, w: int) -> torch.Tensor:
    """(h*w, 2) normalised (u, v) of the cell centres of an h x w map, row-major."""
    v, u = torch.meshgrid(
        (torch.arange(h, dtype=torch.float32) + 0.5) / h,
        (torch.arange(w, dtype=torch.float32) + 0.5) / w,
        indexing="ij",
    )
    return torch.stack([u.flatten(), v.flatten()], dim=1)


def cell_centres(grid: int, num_tokens: int) -> torch.Tensor:
    """(num_tokens, 2) normalised (u, v) of each token's cell centre, row-major, grids repeated."""
    if num_tokens % (grid * grid):
        raise ValueError(f"{num_tokens} image tokens do not fill whole {grid} x {grid} grids")
    return map_centres(grid, grid).repeat(num_tokens // (grid * grid), 1)


def fourier_encoding(uv: torch.Tensor) -> torch.Tensor:
    """(N, 2) in [0, 1] -> (N, 4 * len(FOURIER_FREQUENCIES)) sines and cosines."""
    freqs = uv.new_tensor(FOURIER_FREQUENCIES) * math.pi
    angles = uv[:, :, None] * freqs  # (N, 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)


class SpatialPointer(nn.Module):
    """Attention of F_3D over the image tokens, read out as a location and pooled features."""

    centres: torch.Tensor

    def __init__(self, hidden: int, dim: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.q_proj = nn.Linear(hidden, dim)
        self.k_proj = nn.Linear(hidden, dim)
        self.v_proj = nn.Linear(hidden, dim)
        self.o_proj = nn.Linear(dim, hidden)
        self.position = nn.Linear(4 * len(FOURIER_FREQUENCIES), dim)
        self.register_buffer("centres", cell_centres(grid, grid * grid), persistent=False)

    def forward(
        self,
        features_3d: torch.Tensor,
        tokens: torch.Tensor,
        depth_map: torch.Tensor | None = None,
    ) -> PointerOutput:
        """F_3D (B, hidden), image tokens (B, N', hidden), depth map (B, 1, h, w) or None.

        Returns the PointerOutput of the module docstring.
        """
        dtype = self.q_proj.weight.dtype
        f3d, tokens = features_3d.to(dtype), tokens.to(dtype)
        centres = self.centres.to(dtype)
        if tokens.shape[1] != centres.shape[0]:
            centres = cell_centres(self.grid, tokens.shape[1]).to(tokens.device, dtype)
        keys = self.k_proj(tokens) + self.position(fourier_encoding(centres))  # (B, N', d)
        query = self.q_proj(f3d)  # (B, d)
        logits = torch.einsum("bd,bnd->bn", query, keys) / math.sqrt(query.shape[-1])
        weights = logits.softmax(dim=-1)  # (B, N')
        pooled = torch.einsum("bn,bnd->bd", weights, self.v_proj(tokens))
        depth = None
        if depth_map is not None:
            at_cells = sample_at(depth_map.to(dtype), centres)  # (B, N')
            depth = (weights * at_cells).sum(dim=-1, keepdim=True)
        return PointerOutput(
            logits=logits,
            uv=weights @ centres,  # (B, 2)
            features=f3d + self.o_proj(pooled),
            depth=depth,
        )


def sample_at(maps: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps (B, 1, h, w) at normalised points uv (N, 2) -> (B, N)."""
    grid = (uv * 2.0 - 1.0).view(1, 1, -1, 2).expand(maps.shape[0], -1, -1, -1)
    values = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return values[:, 0, 0]


def pointer_loss(logits: torch.Tensor, center_uv: torch.Tensor, grid: int) -> torch.Tensor:
    """Cross-entropy of the pointer towards the cell(s) holding the true projected centre.

    Args:
        logits: (B, N') pointer logits (k grids of g x g, see the module docstring).
        center_uv: (B, 2) true normalised centre; centres outside the image go to the border cell.
        grid: g.

    Returns:
        Scalar mean over the batch of -log(sum of p over the target cell in every grid).
    """
    cells = (center_uv.float().clamp(0.0, 1.0 - 1e-6) * grid).long()  # (B, 2) col, row
    target = cells[:, 1] * grid + cells[:, 0]  # (B,)
    token_cell = torch.arange(logits.shape[1], device=logits.device) % (grid * grid)
    hit = token_cell[None, :] == target[:, None]  # (B, N')
    logits = logits.float()
    on_target = logits.masked_fill(~hit, float("-inf")).logsumexp(dim=-1)
    return (logits.logsumexp(dim=-1) - on_target).mean()


__all__ = [
    "PointerOutput",
    "SpatialPointer",
    "cell_centres",
    "fourier_encoding",
    "map_centres",
    "pointer_loss",
    "sample_at",
]
