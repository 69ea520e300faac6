"""The two image branches of LLMI3D (paper III-B).

Low-res branch: a transformers ViT / CLIP / SigLIP vision model on the S x S image gives global
tokens T_vit (B, N, C_lr), N = (S / patch)^2, row-major over the token grid.

High-res branch: a CNN (transformers ConvNeXt or our EfficientNet-Lite0) on the H x W image gives
F_local (B, C_hr, h, w); two 3x3 convs split it into F_spatial and F_rgb, a depth head on F_spatial
predicts the object-level depth map, and F_spatial_local = F_spatial + F_rgb is what SECBA
attends to.

Both branches take images in [0, 1] and normalise them with their backbone's own mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch idiom)
from torch import nn

from llmi3d_core.errors import ConfigError
from llmi3d_core.model.config import HighResConfig, LowResConfig, check_choice

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class LowResSpec:
    """How to build one kind of low-res backbone with transformers."""

    config_class: str
    model_class: str
    has_cls_token: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_kwargs: tuple[tuple[str, Any], ...] = ()


LOW_RES_BACKBONES: dict[str, LowResSpec] = {
    "vit": LowResSpec("ViTConfig", "ViTModel", True, HALF, HALF, (("add_pooling_layer", False),)),
    "clip": LowResSpec("CLIPVisionConfig", "CLIPVisionModel", True, CLIP_MEAN, CLIP_STD),
    "siglip": LowResSpec("SiglipVisionConfig", "SiglipVisionModel", False, HALF, HALF),
}


class Normalize(nn.Module):
    """(x - mean) / std per channel, for x (B, 3, H, W) in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H, W)."""
        return (x - self.mean) / self.std


class LowResBranch(nn.Module):
    """ViT-style encoder: (B, 3, S, S) in [0, 1] -> T_vit (B, N, C_lr)."""

    def __init__(self, config: LowResConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        import transformers

        check_choice(config.kind, LOW_RES_BACKBONES, "low_res.kind")
        spec = LOW_RES_BACKBONES[config.kind]
        model_class = getattr(transformers, spec.model_class)
        if config.path is not None and load_pretrained:
            self.backbone = _from_pretrained(model_class, config.path, "low_res.path")
        else:
            if config.path is not None:  # architecture from the path, weights from a checkpoint
                new_config = getattr(transformers, spec.config_class).from_pretrained(
                    config.path, local_files_only=True
                )
            else:
                new_config = getattr(transformers, spec.config_class)(
                    image_size=config.image_size,
                    patch_size=config.patch_size,
                    hidden_size=config.hidden_size,
                    num_hidden_layers=config.num_layers,
                    num_attention_heads=config.num_heads,
                    intermediate_size=config.intermediate_size,
                )
            self.backbone = model_class(new_config, **dict(spec.model_kwargs))
        backbone_config: Any = self.backbone.config
        if backbone_config.patch_size != config.patch_size:
            raise ConfigError(
                f"low_res.patch_size is {config.patch_size} but the model at {config.path} uses "
                f"{backbone_config.patch_size}; set low_res.patch_size to match"
            )
        self.normalize = Normalize(spec.mean, spec.std)
        self.skip_tokens = 1 if spec.has_cls_token else 0
        self.hidden_size = int(backbone_config.hidden_size)
        self.image_size = config.image_size
        self.grid = config.grid
        self.backbone.requires_grad_(config.trainable)

    def forward(self, image_lr: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> T_vit (B, N, C_lr), N = grid^2, CLS token dropped."""
        outputs = self.backbone(
            pixel_values=self.normalize(image_lr), interpolate_pos_encoding=True
        )
        tokens: torch.Tensor = outputs.last_hidden_state[:, self.skip_tokens :]  # (B, N, C_lr)
        return tokens


def _from_pretrained(model_class: Any, path: str, what: str) -> nn.Module:
    """Load a transformers model from a local directory only, with a clear error."""
    try:
        return model_class.from_pretrained(path, local_files_only=True)  # type: ignore[no-any-return]
    except (OSError, ValueError) as err:
        raise ConfigError(f"Could not load {what} {path!r}: {err}") from err


def _build_convnext(config: HighResConfig, load_pretrained: bool) -> tuple[nn.Module, int]:
    from transformers import ConvNextConfig, ConvNextModel

    model: Any
    if config.path is not None and load_pretrained:
        model = _from_pretrained(ConvNextModel, config.path, "high_res.path")
    elif config.path is not None:
        model = ConvNextModel(ConvNextConfig.from_pretrained(config.path, local_files_only=True))
    else:
        model = ConvNextModel(
            ConvNextConfig(
                hidden_sizes=list(config.hidden_sizes),
                depths=list(config.depths),
                num_stages=len(config.depths),
            )
        )
    return _ConvNextFeatures(model), int(model.config.hidden_sizes[-1])


class _ConvNextFeatures(nn.Module):
    """transformers ConvNextModel -> its last stage map (B, C, H / 32, W / 32)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, h, w)."""
        return self.model(pixel_values=self.normalize(x)).last_hidden_state  # type: ignore[no-any-return]


def _build_efficientnet(config: HighResConfig, load_pretrained: bool) -> tuple[nn.Module, int]:
    from llmi3d_core.model.efficientnet_lite import EfficientNetLite0, load_imagenet_weights

    model = EfficientNetLite0()
    if config.pretrained and load_pretrained:
        load_imagenet_weights(model)
    return _EfficientNetFeatures(model), EfficientNetLite0.out_channels


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 with its (x - 0.5) / 0.5 input normalisation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.normalize = Normalize(HALF, HALF)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 320, h, w)."""
        return self.model(self.normalize(x))  # type: ignore[no-any-return]


# kind -> builder(config, load_pretrained) -> (feature extractor, output channels)
HIGH_RES_BACKBONES: dict[str, Callable[[HighResConfig, bool], tuple[nn.Module, int]]] = {
    "convnext": _build_convnext,
    "efficientnet_lite0": _build_efficientnet,
}


def _conv3x3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, padding=1)


class HighResBranch(nn.Module):
    """CNN branch: (B, 3, H, W) -> F_spatial_local (B, C_hr, h, w) and a depth map (B, 1, h, w).

    The depth map is in units of depth_scale virtual-depth units (softplus, so it stays positive);
    with `depth_branch=False` (ablation) there is no Conv_spatial and no depth map.
    """

    def __init__(
        self, config: HighResConfig, depth_scale: float, load_pretrained: bool = True
    ) -> None:
        super().__init__()
        check_choice(config.kind, HIGH_RES_BACKBONES, "high_res.kind")
        self.backbone, channels = HIGH_RES_BACKBONES[config.kind](config, load_pretrained)
        self.backbone.requires_grad_(config.trainable)
        self.out_channels = channels
        self.depth_scale = depth_scale
        self.conv_rgb = _conv3x3(channels)
        self.depth_branch = config.depth_branch
        self.freeze_bn = config.freeze_bn
        if config.depth_branch:
            self.conv_spatial = _conv3x3(channels)
            self.depth_head = nn.Sequential(
                _conv3x3(channels), nn.GELU(), nn.Conv2d(channels, 1, 1)
            )

    def train(self, mode: bool = True) -> HighResBranch:
        """Set train/eval mode; with freeze_bn the backbone's BatchNorm layers stay in eval."""
        super().train(mode)
        if self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, image_hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return F_spatial_local (B, C_hr, h, w) and the depth map (B, 1, h, w) or None.

        The depth map is the object-level depth in virtual-depth units (not divided by scale).
        """
        f_local = self.backbone(image_hr)  # (B, C, h, w)
        f_rgb = self.conv_rgb(f_local)
        if not self.depth_branch:
            return f_rgb, None
        f_spatial = self.conv_spatial(f_local)
        depth = F.softplus(self.depth_head(f_spatial)) * self.depth_scale  # (B, 1, h, w)
        return f_spatial + f_rgb, depth
