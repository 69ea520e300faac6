"""The model on real collated batches of a small synthetic dataset (data/synth + data/dataset)."""

from __future__ import annotations

import pytest
import torch

from llmi3d_core.data.dataset import GroundingDataset, collate_grounding
from llmi3d_core.data.synth import SynthConfig, generate_dataset
from llmi3d_core.model import get_preset
from llmi3d_core.model.decode import decode_boxes
from llmi3d_core.model.losses import TARGETS


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate_dataset(SynthConfig(num_images=3, seed=0), root / "ds", progress=False)


def _batch(root, config, size=4):
    dataset = GroundingDataset(
        root,
        "train",
        hr_size=config.high_res.image_size,
        lr_size=config.low_res.image_size,
        virtual=config.virtual_camera,
    )
    return collate_grounding([dataset[i] for i in range(min(size, len(dataset)))])


def test_forward_backward_on_dataset_batches(dataset_root, make_model):
    model = make_model()
    batch = _batch(dataset_root, model.config)
    out = model(batch)
    assert out.boxes["center"].shape == (len(batch["query"]), 3)
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.losses["total"].backward()
    assert model.query_embedding.grad is not None


def test_decoding_the_targets_gives_the_ground_truth_box(dataset_root):
    """Dataset targets and model decoding share conventions (virtual depth, allocentric 6D)."""
    config = get_preset("tiny").replace(**{"heads.use_height_depth": False})
    batch = _batch(dataset_root, config, size=8)
    outputs = {name: TARGETS[name](batch, config) for name in ("center_uv", "depth", "rot6d")}
    outputs.update(dims=batch["dims_lwh"], box2d=batch["box2d"])
    boxes = decode_boxes(outputs, batch["K"], batch["image_size"], config)
    torch.testing.assert_close(boxes["center"], batch["center_cam"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(boxes["R"], batch["R_cam"], rtol=1e-4, atol=1e-4)
