"""Physical outputs -> metric 3D boxes in the camera frame (paper III-D), through geometry.

Pixels are those of the model's canvas (llmi3d_core/letterbox.py): K is the canvas intrinsics and
image_size the canvas (W, H); the Predictor maps 2D results back to the input image. Both read-outs
(the pointed cell of the dense heads, or the MLP heads on F_3D) give the same outputs.

For location "uv_depth" (the paper):

    (u, v)  = center_uv * (W, H)
    Z1      = virtual_to_real_depth(d_v, f_x, W, f_v, w_v)      (or d itself: no virtual depth)
    Z2      = keypoint_height_depth(h, H_3d, v, R, K),  h = v_bottom - v_top    "keypoints"
            | height_depth(H_3d, h_box, f_y),           h_box = tight box height  "tight_box"
    Z       = exp(fuse_log_depths([log Z1, log Z2], [s1, s2]))   "uncertainty" (MonoFlex-style)
            | (Z1 + Z2) / 2                                      "mean" (eq. 20 as written)
    centre  = backproject(u, v, Z, K)

Without heads.use_height_depth, Z = Z1; without a depth output (high_res.depth_branch false,
pointer read-out), Z = Z2. For "xyz" the head gives the centre and (u, v) = project(centre, K).
Rotations: the allocentric matrix (from 6D or Euler angles) is turned egocentric at (u, v).

Depth is what limits the boxes. On the default model's test split (2026-12-05; the 933 of 1,142
single-target queries whose best box is the target), the mean relative depth error is 13.6 % and
Acc@0.25 33.1 %; with the true depth the same boxes reach 86.0 %. Tried then, not kept: the depth
that makes the box's projection as tall as the crop-corrected 2D box (20.6 %: the size and
rotation errors carry over); averaging the depth, size and keypoint maps with those of the
mirrored canvas (13.3 %, Acc@0.25 of all 1,142 queries 27.4 against 27.3 %); a depth head on the
crop descriptors with the box's rows and the focal length (val objects, 21 %).

All functions are batched torch: K (B, 3, 3), image_size (B, 2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmi3d_core import geometry, rotation
from llmi3d_core.model.config import HeadConfig, ModelConfig

Outputs = dict[str, torch.Tensor]
MIN_DEPTH_M = 1e-2


def _height_depth(
    outputs: Outputs,
    *,
    R: torch.Tensor,
    uv: torch.Tensor,
    K: torch.Tensor,
    image_size: torch.Tensor,
    config: ModelConfig,
) -> torch.Tensor:
    """Z2 (B,) in metres from the object height and its pixel extent (heads.height_extent)."""
    height = image_size[:, 1]
    H_3d = outputs["dims"][:, 2].clamp(min=1e-3)
    if config.heads.height_extent == "tight_box":
        h_px = ((outputs["box2d"][:, 3] - outputs["box2d"][:, 1]) * height).clamp(min=1.0)
        return geometry.height_depth(H_3d, h_px, K[:, 1, 1], validate=False)
    h_px = ((outputs["keypoints"][:, 1] - outputs["keypoints"][:, 0]) * height).clamp(min=1e-3)
    return geometry.keypoint_height_depth(h_px, H_3d, uv[:, 1], R, K, validate=False)


def _metric_depth(
    outputs: Outputs,
    *,
    R: torch.Tensor,
    uv: torch.Tensor,
    K: torch.Tensor,
    image_size: torch.Tensor,
    config: ModelConfig,
) -> dict[str, torch.Tensor]:
    """Depth estimates (B,) in metres: z_head (Z1), z_height (Z2) where used, and the final z."""
    depths: dict[str, torch.Tensor] = {}
    if "depth" in outputs:
        raw = outputs["depth"][:, 0]
        if config.heads.use_virtual_depth:
            raw = geometry.virtual_to_real_depth(
                raw,
                K[:, 0, 0],
                image_size[:, 0],
                config.virtual_focal_px,
                config.virtual_width_px,
                validate=False,
            )
        depths["z_head"] = raw.clamp(min=MIN_DEPTH_M)
    if config.heads.use_height_depth:
        z_height = _height_depth(outputs, R=R, uv=uv, K=K, image_size=image_size, config=config)
        depths["z_height"] = z_height.clamp(min=MIN_DEPTH_M)
    if "z_head" in depths and "z_height" in depths:
        if config.heads.depth_fusion == "mean":
            depths["z"] = geometry.combined_depth(
                depths["z_head"], depths["z_height"], validate=False
            )
        else:
            log_z = torch.stack([depths["z_head"].log(), depths["z_height"].log()], dim=-1)
            zeros = torch.zeros_like(log_z[:, :1])  # Text3D prints no scales: equal weights
            scales = torch.cat(
                [outputs.get("depth_log_scale", zeros), outputs.get("height_log_scale", zeros)],
                dim=-1,
            )
            depths["z"] = geometry.fuse_log_depths(log_z, scales, validate=False).exp()
    else:
        single = depths.get("z_head", depths.get("z_height"))
        assert single is not None  # the config check keeps one depth estimate
        depths["z"] = single
    return depths


def _locate_uv_depth(
    outputs: Outputs, R_allo: torch.Tensor, K: torch.Tensor, image_size: torch.Tensor,
    config: ModelConfig,
) -> Outputs:  # fmt: skip
    uv = outputs["center_uv"] * image_size  # (B, 2) px
    R = rotation.allocentric_to_egocentric(R_allo, uv[:, 0], uv[:, 1], K, validate=False)
    depths = _metric_depth(outputs, R=R, uv=uv, K=K, image_size=image_size, config=config)
    center = geometry.backproject(uv[:, 0], uv[:, 1], depths["z"], K, validate=False)
    return {"center": center, "center_uv_px": uv, "R": R, **depths}


def _locate_xyz(
    outputs: Outputs, R_allo: torch.Tensor, K: torch.Tensor, image_size: torch.Tensor,
    config: ModelConfig,
) -> Outputs:  # fmt: skip
    center = outputs["xyz"]  # (B, 3) m
    uv = geometry.project(center, K, validate=False)  # (B, 2) px
    R = rotation.allocentric_to_egocentric(R_allo, uv[:, 0], uv[:, 1], K, validate=False)
    return {"center": center, "center_uv_px": uv, "R": R, "z": center[:, 2]}


LOCATIONS: dict[
    str, Callable[[Outputs, torch.Tensor, torch.Tensor, torch.Tensor, ModelConfig], Outputs]
] = {
    "uv_depth": _locate_uv_depth,
    "xyz": _locate_xyz,
}

# rotation -> (name of the head output, allocentric matrix from it)
ROTATIONS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "6d": ("rot6d", lambda d6: rotation.rotation_6d_to_matrix(d6, validate=False)),
    "euler": ("euler", lambda angles: rotation.euler_to_matrix(angles, validate=False)),
}


def allocentric_matrix(outputs: Outputs, config: HeadConfig) -> torch.Tensor:
    """(B, 3, 3) allocentric rotation from the rotation head."""
    key, to_matrix = ROTATIONS[config.rotation]
    return to_matrix(outputs[key])


def decode_boxes(
    outputs: Outputs, K: torch.Tensor, image_size: torch.Tensor, config: ModelConfig
) -> Outputs:
    """Turn physical outputs into metric boxes.

    Args:
        outputs: physical outputs (heads.py / detector.cell_outputs), each (B, k).
        K: (B, 3, 3) intrinsics of the canvas.
        image_size: (B, 2) canvas (W, H) in px.
        config: the model config (heads switches and the virtual camera).

    Returns:
        center (B, 3) m camera frame, R (B, 3, 3) egocentric, dims (B, 3) L, W, H m,
        box2d_px (B, 4) xyxy canvas px, center_uv_px (B, 2) canvas px, z (B,) m and, for
        "uv_depth", z_head (B,) and / or z_height (B,) (the estimates that were fused).
    """
    R_allo = allocentric_matrix(outputs, config.heads)
    located = LOCATIONS[config.heads.location](outputs, R_allo, K, image_size, config)
    box2d_px = outputs["box2d"] * image_size.repeat(1, 2)  # (B, 4)
    return {**located, "dims": outputs["dims"], "box2d_px": box2d_px}
