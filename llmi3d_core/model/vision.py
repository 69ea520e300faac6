"""The two image branches of LLMI3D (paper III-B).

Low-res branch: a transformers ViT / CLIP / SigLIP vision model on the S x S image gives global
tokens T_vit (B, N, C_lr), N = (S / patch)^2, row-major over the token grid.

High-res branch: a CNN (transformers ConvNeXt or our EfficientNet-Lite0) on the letterboxed
H x W canvas gives maps at strides 8, 16 and 32; an FPN neck merges them into one stride-8 map F
(B, C, H / 8, W / 8). SECBA attends to F, and the dense heads of detector.py (the paper's depth
branch grown into per-object supervision) read it.

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
from llmi3d_core.model.efficientnet_lite import (
    LITE_VARIANTS,
    EfficientNetLite,
    load_imagenet_weights,
)
from llmi3d_core.model.positions import RAY_CHANNELS, ray_map

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
        import transformers  # noqa: PLC0415 (transformers takes seconds to import; only building this network needs it)

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


def _build_convnext(config: HighResConfig, load_pretrained: bool) -> nn.Module:
    from transformers import ConvNextConfig, ConvNextModel  # noqa: PLC0415 (transformers takes seconds to import; only building this network needs it)

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
    return _ConvNextFeatures(model)


class _ConvNextFeatures(nn.Module):
    """transformers ConvNextModel -> its stage outputs at strides 4, 8, 16, 32 (as many as it has).

    Attributes:
        channels, strides: of each returned map, finest first.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        sizes = list(model.config.hidden_sizes)  # type: ignore[union-attr,arg-type]
        self.channels = sizes
        self.strides = [4 * 2**i for i in range(len(sizes))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> [(B, C_i, H / s_i, W / s_i)], finest first."""
        out = self.model(pixel_values=self.normalize(x), output_hidden_states=True)
        return list(out.hidden_states[1:])  # [0] is the stem output, before stage 1


def _build_efficientnet(config: HighResConfig, load_pretrained: bool) -> nn.Module:
    model = EfficientNetLite(config.kind.removeprefix("efficientnet_"))
    if config.pretrained and load_pretrained:
        load_imagenet_weights(model)
    return _EfficientNetFeatures(model)


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite with its (x - 0.5) / 0.5 input normalisation, at strides 8, 16, 32."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.normalize = Normalize(HALF, HALF)
        self.channels = list(model.tap_channels)
        self.strides = list(model.tap_strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> [(B, C_i, H / s_i, W / s_i)] at strides 8, 16, 32."""
        return self.model.forward_taps(self.normalize(x))  # type: ignore[no-any-return]


# kind -> builder(config, load_pretrained) -> multi-scale feature extractor with `channels` and
# `strides` attributes (finest first)
HIGH_RES_BACKBONES: dict[str, Callable[[HighResConfig, bool], nn.Module]] = {
    "convnext": _build_convnext,
    # one entry per EfficientNet-Lite variant ("efficientnet_lite0", ...): the builder reads the
    # variant back from the kind
    **{f"efficientnet_{variant}": _build_efficientnet for variant in LITE_VARIANTS},
}

NECK_STRIDES = (8, 16, 32)


class FeaturePyramid(nn.Module):
    """FPN neck (Lin et al. 2017): the stride 8/16/32 maps merged top-down into one stride-8 map.

    Each level gets a 1x1 lateral conv to `channels`; coarser levels are upsampled and added to
    finer ones; a 3x3 conv smooths the result. Levels the backbone lacks are skipped, and a
    backbone whose finest map is coarser than 8 gives a map at that stride.
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: int) -> None:
        super().__init__()
        picked = [i for i, s in enumerate(in_strides) if s in NECK_STRIDES]
        if not picked:  # a tiny backbone: use its two coarsest maps
            picked = list(range(len(in_strides)))[-2:]
        self.picked = picked
        self.stride = in_strides[picked[0]]
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels[i], channels, 1) for i in picked)
        self.smooth = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GELU())

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Backbone maps (finest first) -> F (B, channels, H / stride, W / stride)."""
        maps = [conv(features[i]) for conv, i in zip(self.lateral, self.picked, strict=True)]
        merged = maps[-1]
        for finer in reversed(maps[:-1]):
            merged = finer + F.interpolate(merged, size=finer.shape[-2:], mode="nearest")
        return self.smooth(merged)  # type: ignore[no-any-return]


COLOUR_CHANNELS = 12  # mean RGB of the 2 x 2 sub-cells of each stride-8 cell


def colour_map(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 12, H / 8, W / 8): the mean colour of each 4 x 4 block.

    ImageNet features are trained to be fairly colour-blind, and captions name colours ("the red
    chair"): the heads also see the pixels' colours, at twice the map's resolution.
    """
    return F.pixel_unshuffle(F.avg_pool2d(image, 4), 2)


class HighResBranch(nn.Module):
    """CNN + FPN: (B, 3, H, W) canvas in [0, 1] -> F (B, C, H / 8, W / 8) for SECBA and the heads.

    `backbone_features` and `neck` are separate so that training can cache the output of a frozen
    backbone once per image and run only the neck and the heads on it; the backbone output ends
    with the colour map (`colour_map`), which the neck adds to F through a 1 x 1 conv.
    """

    def __init__(self, config: HighResConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        check_choice(config.kind, HIGH_RES_BACKBONES, "high_res.kind")
        self.backbone = HIGH_RES_BACKBONES[config.kind](config, load_pretrained)
        self.backbone.requires_grad_(config.trainable)
        self.trainable = config.trainable
        channels: list[int] = self.backbone.channels  # type: ignore[assignment]
        strides: list[int] = self.backbone.strides  # type: ignore[assignment]
        self.neck = FeaturePyramid(list(channels), list(strides), config.neck_channels)
        self.colour = nn.Conv2d(COLOUR_CHANNELS, config.neck_channels, 1)
        self.rays = nn.Conv2d(RAY_CHANNELS, config.neck_channels, 1)
        self.out_channels = config.neck_channels
        self.stride = self.neck.stride
        self.freeze_bn = config.freeze_bn

    def train(self, mode: bool = True) -> HighResBranch:
        """Set train/eval mode; a frozen backbone (or freeze_bn) keeps its BatchNorm in eval."""
        super().train(mode)
        if self.freeze_bn or not self.trainable:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def backbone_features(self, image_hr: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> the backbone's maps, finest first, then the colour map."""
        return [*self.backbone(image_hr), colour_map(image_hr)]

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """`backbone_features` output -> F (B, C, H / stride, W / stride)."""
        *maps, colours = features
        hr_map = self.neck(maps)
        fused: torch.Tensor = hr_map + self.colour(
            F.interpolate(colours, size=hr_map.shape[-2:], mode="area")
        )
        return fused

    def with_rays(self, hr_map: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """F plus a 1 x 1 conv of the cells' viewing rays (positions.ray_map) for canvas K."""
        h, w = hr_map.shape[-2:]
        rays = ray_map(K, h, w, float(self.stride)).to(hr_map)
        return hr_map + self.rays(rays)  # type: ignore[no-any-return]

    def forward(self, image_hr: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] and canvas K (B, 3, 3) -> F (B, C, H / stride, W / stride)."""
        return self.with_rays(self.fuse(self.backbone_features(image_hr)), K)
