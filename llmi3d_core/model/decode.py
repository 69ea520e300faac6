"""Head outputs -> metric 3D boxes in the camera frame (paper III-D), through llmi3d_core.geometry.

For location "uv_depth" (the paper):

    (u, v) = center_uv * (W, H)                                   px of the original image
    Z1 = virtual_to_real_depth(d_v, f_x, W, f_v, w_v)             (or d itself: no virtual depth)
    Z2 = height_depth(H_3d, h_2d, f_y), h_2d = box2d height in px (skipped: no height depth)
    Z  = combined_depth(Z1, Z2)                                   eq. 20, the mean
    centre = backproject(u, v, Z, K)

For "xyz" the head gives the centre directly and (u, v) = project(centre, K).
Rotations: the allocentric matrix (from 6D or Euler angles) is turned egocentric at (u, v).

All functions are batched torch: K (B, 3, 3), image_size (B, 2) = original (W, H).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmi3d_core import geometry
from llmi3d_core.model.config import HeadConfig, ModelConfig

Outputs = dict[str, torch.Tensor]


def _metric_depth(
    outputs: Outputs, K: torch.Tensor, image_size: torch.Tensor, config: ModelConfig
) -> dict[str, torch.Tensor]:
    """Depth estimates (B,) in metres: z_head (Z1), z_height (Z2, if used) and the final z."""
    width, height = image_size[:, 0], image_size[:, 1]
    raw = outputs["depth"][:, 0]  # (B,)
    if config.heads.use_virtual_depth:
        z_head = geometry.virtual_to_real_depth(
            raw,
            K[:, 0, 0],
            width,
            config.virtual_focal_px,
            config.virtual_width_px,
            validate=False,
        )
    else:
        z_head = raw
    depths = {"z_head": z_head, "z": z_head}
    if config.heads.use_height_depth:
        box_h_px = ((outputs["box2d"][:, 3] - outputs["box2d"][:, 1]) * height).clamp(min=1.0)
        z_height = geometry.height_depth(
            outputs["dims"][:, 2], box_h_px, K[:, 1, 1], validate=False
        )
        depths["z_height"] = z_height
        depths["z"] = geometry.combined_depth(z_head, z_height, validate=False)
    return depths


def _locate_uv_depth(
    outputs: Outputs, K: torch.Tensor, image_size: torch.Tensor, config: ModelConfig
) -> Outputs:
    uv = outputs["center_uv"] * image_size  # (B, 2) px
    depths = _metric_depth(outputs, K, image_size, config)
    center = geometry.backproject(uv[:, 0], uv[:, 1], depths["z"], K, validate=False)
    return {"center": center, "center_uv_px": uv, **depths}


def _locate_xyz(
    outputs: Outputs, K: torch.Tensor, image_size: torch.Tensor, config: ModelConfig
) -> Outputs:
    center = outputs["xyz"]  # (B, 3) m
    uv = geometry.project(center, K, validate=False)  # (B, 2) px
    return {"center": center, "center_uv_px": uv, "z": center[:, 2]}


LOCATIONS: dict[str, Callable[[Outputs, torch.Tensor, torch.Tensor, ModelConfig], Outputs]] = {
    "uv_depth": _locate_uv_depth,
    "xyz": _locate_xyz,
}

# rotation -> (name of the head output, allocentric matrix from it)
ROTATIONS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "6d": ("rot6d", lambda d6: geometry.rotation_6d_to_matrix(d6, validate=False)),
    "euler": ("euler", lambda angles: geometry.euler_to_matrix(angles, validate=False)),
}


def allocentric_matrix(outputs: Outputs, config: HeadConfig) -> torch.Tensor:
    """(B, 3, 3) allocentric rotation from the rotation head."""
    key, to_matrix = ROTATIONS[config.rotation]
    return to_matrix(outputs[key])


def decode_boxes(
    outputs: Outputs, K: torch.Tensor, image_size: torch.Tensor, config: ModelConfig
) -> Outputs:
    """Turn head outputs into metric boxes.

    Args:
        outputs: head outputs (heads.py), each (B, k).
        K: (B, 3, 3) intrinsics of the original image.
        image_size: (B, 2) original (W, H) in px.
        config: the model config (heads switches and the virtual camera).

    Returns:
        center (B, 3) m camera frame, R (B, 3, 3) egocentric, dims (B, 3) L, W, H m,
        box2d_px (B, 4) xyxy px, center_uv_px (B, 2) px, z (B,) m and, for "uv_depth",
        z_head (B,) and z_height (B,) (the two estimates of eq. 20).
    """
    located = LOCATIONS[config.heads.location](outputs, K, image_size, config)
    uv = located["center_uv_px"]
    R = geometry.allocentric_to_egocentric(
        allocentric_matrix(outputs, config.heads), uv[:, 0], uv[:, 1], K, validate=False
    )
    box2d_px = outputs["box2d"] * image_size.repeat(1, 2)  # (B, 4)
    return {**located, "R": R, "dims": outputs["dims"], "box2d_px": box2d_px}
