"""Spatial-enhanced cross-branch attention (SECBA, paper eq. 4-5) and its ablation variants.

All variants map (T_vit (B, N, C_lr), F (B, C_hr, h, w)) to image tokens (B, N', C_lr) that the
projector then sends to the LLM. N is a square grid g x g (row-major), as the ViT gives it.

    secba        Q = (T_vit + P_lr) W_Q, K = (F + P_hr) W_K, V = F W_V over all h*w HR
                 positions, T = T_vit + (softmax(Q K^T / sqrt(d)) V) W_O          N' = N
                 P_lr, P_hr: learned projections of a Fourier encoding of each token's and
                 each HR position's image coordinates (fusion.position_encoding; 0 without)
    secba_local  the same, but LR token (i, j) attends only to its own HR window
                 (Mini-Gemini's "patch info mining", arXiv:2403.18814)           N' = N
    maxpool      T = T_vit + W (max over the token's HR window)   (no attention) N' = N
    concat       "no SECBA": HR features average-pooled to the g x g grid and appended
                 as separate tokens; the LLM's own attention mixes them            N' = 2N

The residual on T_vit keeps the global semantics when the HR branch is still untrained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch idiom)
from torch import nn

from llmi3d_core.model.config import FusionConfig, check_choice
from llmi3d_core.model.positions import FOURIER_WIDTH, cell_centres, fourier_encoding, map_centres


def windows_to_grid(features: torch.Tensor, grid: int) -> tuple[torch.Tensor, int]:
    """Resample HR features so each of the grid x grid LR tokens owns an r x r window.

    (B, C, h, w) -> windows (B, grid*grid, r*r, C), row-major over the LR grid, and r.
    r = ceil(max(h, w) / grid); the map is bilinearly resized to (grid*r, grid*r) first.
    """
    B, C, h, w = features.shape
    r = max(1, math.ceil(max(h, w) / grid))
    size = grid * r
    if (h, w) != (size, size):
        features = F.interpolate(features, size=(size, size), mode="bilinear", align_corners=False)
    windows = features.view(B, C, grid, r, grid, r).permute(0, 2, 4, 3, 5, 1)
    return windows.reshape(B, grid * grid, r * r, C), r


class _Attention(nn.Module):
    """Multi-head attention of LR queries over HR keys/values, with an output projection."""

    def __init__(self, lr_dim: int, hr_dim: int, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion.dim {dim} is not divisible by fusion.num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(lr_dim, dim)
        self.k_proj = nn.Linear(hr_dim, dim)
        self.v_proj = nn.Linear(hr_dim, dim)
        self.o_proj = nn.Linear(dim, lr_dim)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend: queries (B, N, C_lr), keys (B, N or 1, M, C_hr) -> (B, N, C_lr).

        Keys with a second dimension of 1 are shared by every query (global attention); with N
        they are per-query windows (local attention). Values default to the keys.
        """
        B, N, _ = queries.shape
        heads = self.num_heads
        q = self.q_proj(queries).view(B, N, heads, 1, -1)  # (B, N, h, 1, d_h)
        k = self.k_proj(keys)  # (B, N|1, M, d)
        v = self.v_proj(keys if values is None else values)
        M = k.shape[2]
        k = k.view(B, k.shape[1], M, heads, -1).transpose(2, 3).expand(B, N, heads, M, -1)
        v = v.view(B, v.shape[1], M, heads, -1).transpose(2, 3).expand(B, N, heads, M, -1)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, N, h, 1, d_h)
        out: torch.Tensor = self.o_proj(attended.reshape(B, N, -1))  # (B, N, C_lr)
        return out


class GlobalSECBA(nn.Module):
    """Eq. 4-5: every LR token attends to all HR positions (with position encodings)."""

    def __init__(self, lr_dim: int, hr_dim: int, grid: int, config: FusionConfig) -> None:
        super().__init__()
        self.grid = grid
        self.attention = _Attention(lr_dim, hr_dim, config.dim or lr_dim, config.num_heads)
        self.lr_position: nn.Linear | None = None
        self.hr_position: nn.Linear | None = None
        if config.position_encoding:
            self.lr_position = nn.Linear(FOURIER_WIDTH, lr_dim)
            self.hr_position = nn.Linear(FOURIER_WIDTH, hr_dim)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Fuse: tokens (B, N, C_lr), features (B, C_hr, h, w) -> (B, N, C_lr)."""
        h, w = features.shape[-2:]
        values = features.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, h*w, C_hr)
        queries, keys = tokens, values
        if self.lr_position is not None and self.hr_position is not None:
            lr_uv = cell_centres(self.grid, tokens.shape[1]).to(tokens)
            hr_uv = map_centres(h, w).to(features)
            queries = tokens + self.lr_position(fourier_encoding(lr_uv))
            keys = values + self.hr_position(fourier_encoding(hr_uv))
        attended: torch.Tensor = self.attention(queries, keys, values)
        return tokens + attended


class LocalSECBA(nn.Module):
    """Patch info mining: LR token (i, j) attends to the HR window under it."""

    def __init__(self, lr_dim: int, hr_dim: int, grid: int, config: FusionConfig) -> None:
        super().__init__()
        self.grid = grid
        self.attention = _Attention(lr_dim, hr_dim, config.dim or lr_dim, config.num_heads)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Fuse: tokens (B, N, C_lr), features (B, C_hr, h, w) -> (B, N, C_lr)."""
        windows, _ = windows_to_grid(features, self.grid)  # (B, N, r*r, C_hr)
        attended: torch.Tensor = self.attention(tokens, windows)
        return tokens + attended


class MaxPoolFusion(nn.Module):
    """Ablation: each LR token gets the max over its HR window, linearly projected and added."""

    def __init__(self, lr_dim: int, hr_dim: int, grid: int, config: FusionConfig) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(hr_dim, lr_dim)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Fuse: tokens (B, N, C_lr), features (B, C_hr, h, w) -> (B, N, C_lr)."""
        windows, _ = windows_to_grid(features, self.grid)  # (B, N, r*r, C_hr)
        pooled: torch.Tensor = self.proj(windows.amax(dim=2))  # (B, N, C_lr)
        return tokens + pooled


class ConcatFusion(nn.Module):
    """The "no SECBA" ablation: HR features average-pooled to the LR grid, appended as tokens."""

    def __init__(self, lr_dim: int, hr_dim: int, grid: int, config: FusionConfig) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(hr_dim, lr_dim)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Fuse: tokens (B, N, C_lr), features (B, C_hr, h, w) -> (B, 2N, C_lr)."""
        pooled = F.adaptive_avg_pool2d(features, self.grid)  # (B, C_hr, g, g)
        hr_tokens = self.proj(pooled.flatten(2).transpose(1, 2))  # (B, N, C_lr)
        return torch.cat([tokens, hr_tokens], dim=1)


FUSIONS: dict[str, type[nn.Module]] = {
    "secba": GlobalSECBA,
    "secba_local": LocalSECBA,
    "maxpool": MaxPoolFusion,
    "concat": ConcatFusion,
}


def build_fusion(config: FusionConfig, lr_dim: int, hr_dim: int, grid: int) -> nn.Module:
    """Build the fusion module named by config.kind (see the module docstring)."""
    check_choice(config.kind, FUSIONS, "fusion.kind")
    return FUSIONS[config.kind](lr_dim, hr_dim, grid, config)
