"""Read-out of F_3D from the LLM and the MLP heads on it (paper III-C).

A read-out says which tokens follow the answer and which hidden state is F_3D:

    query         ... answer <pos> [3D Query]   F_3D = hidden of the 3D Query (the paper)
    pos_token     ... answer <pos>              F_3D = hidden of <pos>
    text_feature  ... answer <pos>              F_3D = hidden of the last text token before <pos>
    text          ... answer <pos> numbers EOS  Text3D: no F_3D, numbers generated (text3d.py)

With heads.pointer (the default) the box is read from the detector's dense heads at the object
the 3D Query points at (detector.py, pointer.py). Without it (the paper's read-out), one MLP per
output on F_3D gives the box, in the same physical units decode.decode_boxes reads:

    center_uv        (B, 2) projected 3D centre, normalised canvas coordinates  "uv_depth"
    depth            (B, 1) virtual depth (or metric Z, m): exp(raw) * depth_scale "uv_depth"
    depth_log_scale  (B, 1) log Laplacian scale of log(depth)                  "uv_depth"
    xyz              (B, 3) camera-frame centre, m                              "xyz"
    rot6d            (B, 6) allocentric 6D (PyTorch3D rows)                     rotation "6d"
    euler            (B, 3) allocentric Euler angles, rad                       rotation "euler"
    dims             (B, 3) L, W, H in m: the global size prior times exp(raw)
    box2d            (B, 4) normalised xyxy of the tight 2D box
    keypoints        (B, 2) normalised rows of the projected top and bottom face centres
    height_log_scale (B, 1) log Laplacian scale of log(height depth)
    score_logit      (B, 1) logit of the predicted box quality; sigmoid gives Prediction.score.
                     It is trained (losses.py) to predict q = IoU2D(box2d, gt) * exp(-|log(z/z*)|),
                     a cheap proxy of the 3D IoU, so a low score flags an unreliable box.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch idiom)
from torch import nn

from llmi3d_core.model.config import HeadConfig, check_choice


@dataclass(frozen=True)
class Readout:
    """Tokens appended after the answer phrase, and where F_3D is read.

    Attributes:
        append_query: append the learnable 3D Query embedding after <pos>.
        offset: index of F_3D counted from the end of the sequence (-1 = last token); None for
            Text3D, which reads no hidden state.
    """

    append_query: bool
    offset: int | None


READOUTS: dict[str, Readout] = {
    "query": Readout(append_query=True, offset=-1),
    "pos_token": Readout(append_query=False, offset=-1),
    "text_feature": Readout(append_query=False, offset=-2),
    "text": Readout(append_query=False, offset=None),
}

# output groups: name -> {head name: raw width}
LOCATION_OUTPUTS: dict[str, dict[str, int]] = {
    "uv_depth": {"center_uv": 2, "depth": 1, "depth_log_scale": 1},
    "xyz": {"xyz": 3},
}
ROTATION_OUTPUTS: dict[str, dict[str, int]] = {"6d": {"rot6d": 6}, "euler": {"euler": 3}}
COMMON_OUTPUTS: dict[str, int] = {
    "dims": 3,
    "box2d": 4,
    "keypoints": 2,
    "height_log_scale": 1,
    "score_logit": 1,
}

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
KEYPOINT_SCALE = 0.1  # the keypoint head's unit of height: a tenth of the canvas height


def _xyxy(center: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Centre (B, 2) and raw (B, 4) -> (B, 4) normalised xyxy; the size is sigmoid(raw[:, 2:])."""
    size = torch.sigmoid(raw[:, 2:])
    return torch.cat([center - size / 2, center + size / 2], dim=1)


def head_widths(config: HeadConfig) -> dict[str, int]:
    """Names and raw widths of the heads this config needs."""
    check_choice(config.location, LOCATION_OUTPUTS, "heads.location")
    check_choice(config.rotation, ROTATION_OUTPUTS, "heads.rotation")
    return {
        **LOCATION_OUTPUTS[config.location],
        **ROTATION_OUTPUTS[config.rotation],
        **COMMON_OUTPUTS,
    }


def physical_outputs(
    raw: dict[str, torch.Tensor], config: HeadConfig, log_prior: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Raw MLP outputs (B, k) -> physical units (module docstring).

    Args:
        raw: {name: (B, width)}.
        config: the head config.
        log_prior: (3,) log of the global (L, W, H) prior of the training objects.
    """
    out: dict[str, torch.Tensor] = {}
    box2d = _xyxy(torch.sigmoid(raw["box2d"][:, :2]), raw["box2d"])
    height = raw["keypoints"][:, 1:].clamp(max=5.0).exp() * KEYPOINT_SCALE
    mid = (box2d[:, 1:2] + box2d[:, 3:4]) / 2 + raw["keypoints"][:, :1] * height
    out["box2d"] = box2d
    out["keypoints"] = torch.cat([mid - height / 2, mid + height / 2], dim=1)
    out["dims"] = (raw["dims"] + log_prior.to(raw["dims"])).clamp(max=6.0).exp()
    out["height_log_scale"] = raw["height_log_scale"]
    out["score_logit"] = raw["score_logit"]
    if "center_uv" in raw:
        out["center_uv"] = raw["center_uv"] + 0.5
        out["depth"] = raw["depth"].clamp(max=8.0).exp() * config.depth_scale
        out["depth_log_scale"] = raw["depth_log_scale"]
    if "xyz" in raw:
        xyz = raw["xyz"]
        out["xyz"] = torch.cat(
            [xyz[:, :2] * config.xyz_scale, F.softplus(xyz[:, 2:]) * config.depth_scale], dim=1
        )
    if "rot6d" in raw:
        out["rot6d"] = raw["rot6d"] + raw["rot6d"].new_tensor(IDENTITY_6D)
    if "euler" in raw:
        out["euler"] = raw["euler"]
    return out


class Heads(nn.Module):
    """MLP heads on F_3D: (B, hidden) -> dict of (B, k) outputs in physical units."""

    def __init__(self, in_features: int, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.mlps = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Linear(in_features, config.hidden),
                    nn.GELU(),
                    nn.Linear(config.hidden, width),
                )
                for name, width in head_widths(config).items()
            }
        )

    def forward(
        self, features_3d: torch.Tensor, log_prior: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """(B, hidden) F_3D and the (3,) global log size prior -> {name: (B, k)} (heads' dtype)."""
        features_3d = features_3d.to(next(self.parameters()).dtype)
        raw = {name: mlp(features_3d) for name, mlp in self.mlps.items()}
        return physical_outputs(raw, self.config, log_prior)
