"""The model on real collated batches of a small synthetic dataset (data/synth + data/dataset)."""

from __future__ import annotations

import torch

from llmi3d_core.data.dataset import ImageDataset, collate_grounding
from llmi3d_core.model import get_preset
from llmi3d_core.model.decode import decode_boxes
from llmi3d_core.model.losses import box_targets, weighted_total


def test_forward_backward_on_dataset_batches(make_model, make_batch):
    model = make_model()
    types = ("caption", "question", "box_prompt", "point_prompt")
    batch = make_batch(model.config, size=4, query_types=types)
    assert batch["query_type"] == list(types)
    out = model(batch)
    assert out.boxes["center"].shape == (4, 3)
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.losses["total"].backward()
    assert model.query_embedding.grad is not None


def test_detector_losses_on_image_batches(make_model, synth_dataset):
    """The detector stage's batches (one item per image, no query) train the dense heads alone."""
    model = make_model()
    images = ImageDataset(synth_dataset.root, "train", model.config, dataset=synth_dataset)
    batch = collate_grounding([images[i] for i in range(3)])
    assert "query" not in batch and batch["heatmap"].shape[:2] == (3, 1)
    features = model.image_side(batch["image_hr"], batch["K"], batch["image_size"])
    assert features.candidates is None and features.tokens.shape[1] == 0
    losses = model.detector_losses(batch, features)
    assert set(losses) == {
        "heatmap",
        "center_uv",
        "depth",
        "dims",
        "rotation",
        "box2d",
        "keypoints",
    }
    weighted_total(losses, model.config).backward()
    assert model.dense_heads.outputs["heatmap"].weight.grad is not None
    assert model.query_embedding.grad is None  # no language involved


def test_decoding_the_targets_gives_the_ground_truth_box(make_batch):
    """Dataset targets and model decoding share conventions (canvas, virtual depth, keypoints)."""
    config = get_preset("tiny")
    types = ("caption", "question", "box_prompt", "point_prompt")
    batch = make_batch(config, size=8, query_types=types)
    targets = box_targets(batch, config)
    zeros = torch.zeros(8, 1)
    outputs = {
        name: targets[name] for name in ("center_uv", "depth", "rot6d", "box2d", "keypoints")
    }
    outputs.update(dims=batch["dims_lwh"], depth_log_scale=zeros, height_log_scale=zeros)
    boxes = decode_boxes(outputs, batch["K"], batch["image_size"], config)
    torch.testing.assert_close(boxes["center"], batch["center_cam"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(boxes["R"], batch["R_cam"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(boxes["z_head"], boxes["z_height"], rtol=1e-3, atol=0)
