"""Read-out of F_3D from the LLM and the MLP heads on it (paper III-C).

A read-out says which tokens follow the answer and which hidden state is F_3D:

    query         ... answer <pos> [3D Query]   F_3D = hidden of the 3D Query (the paper)
    pos_token     ... answer <pos>              F_3D = hidden of <pos>
    text_feature  ... answer <pos>              F_3D = hidden of the last text token before <pos>
    text          ... answer <pos> numbers EOS  Text3D: no F_3D, numbers generated (text3d.py)

Heads (one MLP each) and what they output, in physical units:

    center_uv    (B, 2) projected 3D centre / (W, H)           location "uv_depth"
    depth        (B, 1) virtual depth, or metric Z in m         location "uv_depth"
    xyz          (B, 3) camera-frame centre, m                  location "xyz"
    rot6d        (B, 6) allocentric 6D (PyTorch3D rows)         rotation "6d"
    euler        (B, 3) allocentric Euler angles, rad           rotation "euler"
    dims         (B, 3) L, W, H in m
    box2d        (B, 4) normalised xyxy of the 2D box
    score_logit  (B, 1) logit of the predicted box quality; sigmoid gives Prediction.score.
                 It is trained (losses.py) to predict q = IoU2D(box2d, gt) * exp(-|log(z / z_gt)|),
                 a cheap proxy of the 3D IoU, so a low score flags an unreliable box.
"""

from __future__ import annotations

from collections.abc import Callable
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
    "uv_depth": {"center_uv": 2, "depth": 1},
    "xyz": {"xyz": 3},
}
ROTATION_OUTPUTS: dict[str, dict[str, int]] = {"6d": {"rot6d": 6}, "euler": {"euler": 3}}
COMMON_OUTPUTS: dict[str, int] = {"dims": 3, "box2d": 4, "score_logit": 1}

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _xyxy(center: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Centre (B, 2) and raw (B, 4) -> (B, 4) normalised xyxy; the size is sigmoid(raw[:, 2:])."""
    size = torch.sigmoid(raw[:, 2:])
    return torch.cat([center - size / 2, center + size / 2], dim=1)


def _box_from_center_size(raw: torch.Tensor) -> torch.Tensor:
    """(B, 4) raw -> (B, 4) normalised xyxy with x1 <= x2, y1 <= y2 (sigmoid centre and size)."""
    return _xyxy(torch.sigmoid(raw[:, :2]), raw)


def output_activations(config: HeadConfig) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Map each head's raw output to physical units (see the module docstring)."""
    depth_scale, xyz_scale = config.depth_scale, config.xyz_scale

    def xyz(raw: torch.Tensor) -> torch.Tensor:
        return torch.cat([raw[:, :2] * xyz_scale, F.softplus(raw[:, 2:]) * depth_scale], dim=1)

    def rot6d(raw: torch.Tensor) -> torch.Tensor:
        return raw + raw.new_tensor(IDENTITY_6D)

    return {
        "center_uv": lambda raw: raw + 0.5,
        "depth": lambda raw: F.softplus(raw) * depth_scale,
        "xyz": xyz,
        "rot6d": rot6d,
        "euler": lambda raw: raw,
        "dims": F.softplus,
        "box2d": _box_from_center_size,
        "score_logit": lambda raw: raw,
    }


def head_widths(config: HeadConfig) -> dict[str, int]:
    """Names and raw widths of the heads this config needs."""
    check_choice(config.location, LOCATION_OUTPUTS, "heads.location")
    check_choice(config.rotation, ROTATION_OUTPUTS, "heads.rotation")
    return {
        **LOCATION_OUTPUTS[config.location],
        **ROTATION_OUTPUTS[config.rotation],
        **COMMON_OUTPUTS,
    }


class Heads(nn.Module):
    """MLP heads on F_3D: (B, hidden) -> dict of (B, k) outputs in physical units."""

    def __init__(self, in_features: int, config: HeadConfig) -> None:
        super().__init__()
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
        self.activations = output_activations(config)
        self.depth_scale = config.depth_scale

    def forward(
        self,
        features_3d: torch.Tensor,
        anchor_uv: torch.Tensor | None = None,
        anchor_depth: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """(B, hidden) -> {name: (B, k)}, in the heads' dtype (F_3D is cast to it).

        With `anchor_uv` (B, 2) (the pointer's location, pointer.py) the centre and the 2D box
        centre are offsets from it instead of from the image centre; with `anchor_depth` (B, 1)
        (the depth map there) the depth head corrects that value instead of predicting from 0.
        """
        features_3d = features_3d.to(next(self.parameters()).dtype)
        raw = {name: mlp(features_3d) for name, mlp in self.mlps.items()}
        outputs = {name: self.activations[name](value) for name, value in raw.items()}
        if anchor_uv is not None:
            anchor = anchor_uv.to(features_3d.dtype)
            if "center_uv" in raw:
                outputs["center_uv"] = anchor + raw["center_uv"]
            outputs["box2d"] = _xyxy(anchor + raw["box2d"][:, :2], raw["box2d"])
        if anchor_depth is not None and "depth" in raw:
            # softplus(raw + softplus^-1(anchor)): positive, and equal to the anchor at raw = 0
            anchor = (anchor_depth.to(features_3d.dtype) / self.depth_scale).clamp(min=1e-4)
            inverse = anchor + torch.log(-torch.expm1(-anchor))
            outputs["depth"] = F.softplus(raw["depth"] + inverse) * self.depth_scale
        return outputs
