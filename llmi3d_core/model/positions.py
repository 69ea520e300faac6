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


RAY_CHANNELS = 4


def ray_map(K: torch.Tensor, height: int, width: int, stride: float) -> torch.Tensor:
    """Viewing rays of the cells of an (height, width) map: (B, 4, height, width).

    Channels x_n, y_n (the normalised ray K^-1 [u, v, 1] of each cell centre) and their squares.
    A CNN is blind to where a cell is and to the camera; with these, the heads can read depth
    from the ground plane ("lower in the image and below the horizon is nearer") for any focal
    length, as the virtual camera does for apparent size.
    """
    K = K.float()
    v, u = torch.meshgrid(
        (torch.arange(height, dtype=torch.float32, device=K.device) + 0.5) * stride,
        (torch.arange(width, dtype=torch.float32, device=K.device) + 0.5) * stride,
        indexing="ij",
    )
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    x_n, y_n = (u[None] - cx) / fx, (v[None] - cy) / fy  # (B, h, w)
    return torch.stack([x_n, y_n, x_n * x_n, y_n * y_n], dim=1)


__all__ = [
    "FOURIER_FREQUENCIES",
    "FOURIER_WIDTH",
    "RAY_CHANNELS",
    "cell_centres",
    "fourier_encoding",
    "map_centres",
    "ray_map",
]
