"""Image positions as features: cell centres of token grids and their Fourier encoding.

SECBA adds them to its queries and keys, and the object tokens and the pointer's candidates
carry them, so that attention knows where in the canvas a token or an object is.
"""

from __future__ import annotations

import math

import torch

FOURIER_FREQUENCIES = (1.0, 2.0, 4.0, 8.0)
FOURIER_WIDTH = 4 * len(FOURIER_FREQUENCIES)


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
    """(..., 2) in [0, 1] -> (..., FOURIER_WIDTH) sines and cosines of 4 frequencies."""
    freqs = uv.new_tensor(FOURIER_FREQUENCIES) * math.pi
    angles = uv[..., :, None] * freqs  # (..., 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


__all__ = [
    "FOURIER_FREQUENCIES",
    "FOURIER_WIDTH",
    "cell_centres",
    "fourier_encoding",
    "map_centres",
]
