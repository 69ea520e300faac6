"""Oracle: ground-truth head outputs decoded the way inference decodes must give the true box.

Every query of a generated synthetic set (all query types, all camera groups) gets the physical
outputs its target calls for (data/dataset.py targets), once directly and once through the dense
heads' parametrisation (the raw values at the target's centre cell, run through
detector.cell_outputs). decode.decode_boxes must then reproduce the ground-truth box with 3D IoU
> 0.99 for every query and every config whose decoding is meant to be exact. The paper's eq. 20
(h from the tight 2D box, plain mean) is not exact: its figure is printed, not asserted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from llmi3d_core.data.dataset import GroundingDataset, collate_grounding
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.geometry import box3d_corners
from llmi3d_core.iou import box3d_iou_batch
from llmi3d_core.model import get_preset
from llmi3d_core.model.config import ModelConfig
from llmi3d_core.model.decode import decode_boxes
from llmi3d_core.model.detector import CellGrid, cell_outputs
from llmi3d_core.rotation import euler_to_matrix, matrix_to_euler, rotation_6d_to_matrix

EXACT_CONFIGS = {
    "default": {},
    "no height depth": {"heads.use_height_depth": False},
    "height depth alone": {"high_res.depth_branch": False},
    "no virtual depth": {"heads.use_virtual_depth": False},
    "euler": {"heads.rotation": "euler"},
    "mlp read-out": {"heads.pointer": False},
    "mean fusion": {"heads.depth_fusion": "mean"},
}
PAPER_EQ20 = {"heads.height_extent": "tight_box", "heads.depth_fusion": "mean"}


@pytest.fixture(scope="module")
def synth_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelConfig, dict[str, Any]]:
    """Every query of a 40-image set over all camera groups, collated (smol preset canvas)."""
    root = tmp_path_factory.mktemp("oracle") / "synth"
    generate_dataset(SynthConfig(num_images=40, seed=11), root, progress=False)
    dataset = read_dataset(root)
    config = get_preset("smol")
    items = []
    for split in ("train", "val", "test"):
        queries = GroundingDataset(root, split, config, dataset=dataset)
        items += [queries[i] for i in range(len(queries))]
    assert {item["camera_group"] for item in items} >= {"vga_normal", "kitti_like", "nuscenes_like"}
    assert {item["query_type"] for item in items} == {
        "caption", "question", "box_prompt", "point_prompt"
    }  # fmt: skip
    return config, collate_grounding(items)


def oracle_outputs(batch: dict[str, Any], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The physical outputs a perfect model would give for each query's target."""
    B = len(batch["query"])
    depth = batch["virtual_depth"] if config.heads.use_virtual_depth else batch["center_cam"][:, 2:]
    outputs = {
        "center_uv": batch["center_uv"].double(),
        "dims": batch["dims_lwh"].double(),
        "box2d": batch["box2d"].double(),
        "keypoints": batch["keypoints"].double(),
        "height_log_scale": torch.zeros(B, 1, dtype=torch.float64),
    }
    if config.high_res.depth_branch or not config.heads.pointer:
        outputs["depth"] = depth.double()
        outputs["depth_log_scale"] = torch.zeros(B, 1, dtype=torch.float64)
    R_allo = rotation_6d_to_matrix(batch["rot6d_allo"].double())
    if config.heads.rotation == "euler":
        outputs["euler"] = matrix_to_euler(R_allo)
    else:
        outputs["rot6d"] = batch["rot6d_allo"].double()
    return outputs


def through_dense_heads(
    outputs: dict[str, torch.Tensor], batch: dict[str, Any], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """The same outputs encoded as raw values at the centre cell and decoded by cell_outputs."""
    height, width = config.high_res.image_size
    size = torch.tensor([width, height], dtype=torch.float64)
    grid = CellGrid(
        stride=8.0, height=height // 8, width=width // 8, canvas_w=width, canvas_h=height
    )
    centre_px = outputs["center_uv"] * size
    cells = grid.cell_of(centre_px)
    offset = centre_px / 8.0 - (grid.centres_px(cells).double() / 8.0)
    box = outputs["box2d"] * size.repeat(2)
    box_size = box[:, 2:] - box[:, :2]
    box_centre = (box[:, :2] + box[:, 2:]) / 2
    kp = outputs["keypoints"] * height
    h_px = kp[:, 1] - kp[:, 0]
    log_priors = torch.zeros(1, 3, dtype=torch.float64)
    raw = {
        "heatmap": torch.zeros(len(cells), 1, dtype=torch.float64),
        "offset": offset,
        "box2d": torch.cat([(box_centre - centre_px) / box_size, (box_size / 8.0).log()], 1),
        "keypoints": torch.stack(
            [((kp[:, 0] + kp[:, 1]) / 2 - centre_px[:, 1]) / h_px, (h_px / 8.0).log()], 1
        ),
        "height_log_scale": outputs["height_log_scale"],
        "dims": outputs["dims"].log(),
    }
    if "depth" in outputs:
        raw["depth"] = (outputs["depth"] / config.heads.depth_scale).log()
        raw["depth_log_scale"] = outputs["depth_log_scale"]
    for name in ("rot6d", "euler"):
        if name in outputs:
            identity = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64)
            raw[name] = outputs[name] - identity if name == "rot6d" else outputs[name]
    decoded = cell_outputs(
        {k: v[:, None, :] for k, v in raw.items()}, cells[:, None], grid, log_priors, config
    )
    return {k: v[:, 0] for k, v in decoded.items()}


def oracle_ious(outputs: dict[str, torch.Tensor], batch: dict[str, Any], config: ModelConfig):
    boxes = decode_boxes(outputs, batch["K"].double(), batch["image_size"].double(), config)
    pred = box3d_corners(boxes["center"], boxes["dims"], boxes["R"])
    gt = box3d_corners(
        batch["center_cam"].double(), batch["dims_lwh"].double(), batch["R_cam"].double()
    )
    return np.asarray(box3d_iou_batch(pred.numpy(), gt.numpy()))


@pytest.mark.parametrize("name", list(EXACT_CONFIGS))
def test_ground_truth_outputs_decode_to_the_true_box(synth_batch, name):
    base, batch = synth_batch
    config = base.replace(**EXACT_CONFIGS[name])
    outputs = oracle_outputs(batch, config)
    ious = oracle_ious(outputs, batch, config)
    worst = int(np.argmin(ious))
    assert ious.min() > 0.99, (
        f"{name}: {int((ious <= 0.99).sum())} of {len(ious)} queries decode to IoU <= 0.99; "
        f"worst {ious[worst]:.4f} ({batch['query_id'][worst]}, {batch['camera_group'][worst]})"
    )
    if config.heads.pointer:
        dense = oracle_ious(through_dense_heads(outputs, batch, config), batch, config)
        assert dense.min() > 0.99, f"{name} through the dense heads: worst {dense.min():.4f}"


def test_paper_eq20_is_not_exact_and_its_figure_is_reported(synth_batch, capsys):
    base, batch = synth_batch
    config = base.replace(**PAPER_EQ20)
    ious = oracle_ious(oracle_outputs(batch, config), batch, config)
    acc = float((ious > 0.25).mean())
    with capsys.disabled():
        print(
            f"\noracle decoding, eq. 20 as written (tight-box h, mean): Acc@0.25 {100 * acc:.1f}%, "
            f"IoU > 0.99 on {100 * float((ious > 0.99).mean()):.1f}% of {len(ious)} queries"
        )
    assert acc < 1.0  # the reason for the keypoint height depth


def test_euler_round_trip_is_exact():
    angles = torch.tensor([[0.1, -1.2, 0.3]], dtype=torch.float64)
    assert torch.allclose(matrix_to_euler(euler_to_matrix(angles)), angles)
