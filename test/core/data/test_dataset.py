"""GroundingDataset / collate_grounding: the training contract, targets and the mirror."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmi3d_core.data.dataset import (
    GroundingDataset,
    collate_grounding,
    mirror_text,
    object_depth_map,
)
from llmi3d_core.data.format import read_dataset
from llmi3d_core.data.synth import SynthConfig, generate_dataset
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.geometry import (
    VirtualCamera,
    allocentric_to_egocentric,
    box3d_corners,
    project,
    rotation_6d_to_matrix,
    virtual_to_real_depth,
)

HR, LR = (96, 128), 64


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    config = SynthConfig(
        num_images=6,
        seed=2,
        camera_groups=("vga_normal", "kitti_like"),
        split_fractions=(0.5, 0.5, 0.0),
    )
    return generate_dataset(config, tmp_path_factory.mktemp("ds") / "ds", progress=False)


def test_item_keys_shapes_and_types(root):
    ds = GroundingDataset(root, "train", hr_size=HR, lr_size=LR)
    assert len(ds) > 0
    item = ds[0]
    shapes = {
        "image_hr": (3, *HR),
        "image_lr": (3, LR, LR),
        "K": (3, 3),
        "image_size": (2,),
        "box_prompt": (4,),
        "point_prompt": (2,),
        "center_uv": (2,),
        "virtual_depth": (1,),
        "dims_lwh": (3,),
        "rot6d_allo": (6,),
        "box2d": (4,),
        "depth_map": (1, HR[0] // 8, HR[1] // 8),
        "center_cam": (3,),
        "R_cam": (3, 3),
    }
    for key, shape in shapes.items():
        assert isinstance(item[key], torch.Tensor) and item[key].dtype == torch.float32, key
        assert tuple(item[key].shape) == shape, key
    for key in ("query", "answer", "query_type", "query_id", "camera_group"):
        assert isinstance(item[key], str), key
    assert isinstance(item["novel_category"], bool)
    assert float(item["image_hr"].min()) >= 0.0 and float(item["image_hr"].max()) <= 1.0
    batch = collate_grounding([ds[0], ds[1]])
    assert batch["image_hr"].shape == (2, 3, *HR) and batch["query"] == [
        ds[0]["query"],
        ds[1]["query"],
    ]
    assert batch["novel_category"] == [ds[0]["novel_category"], ds[1]["novel_category"]]


def _check_targets(item, virtual: VirtualCamera) -> None:
    """The targets decode back to the stored 3D box with the geometry functions."""
    K = item["K"].double()
    W, H = (float(v) for v in item["image_size"])
    uv = item["center_uv"].double() * torch.tensor([W, H], dtype=torch.float64)
    Z = virtual_to_real_depth(
        item["virtual_depth"].double()[0], K[0, 0], torch.tensor(W, dtype=torch.float64),
        virtual.focal_px, virtual.width_px,
    )  # fmt: skip
    assert float(Z) == pytest.approx(float(item["center_cam"][2]), rel=1e-5)
    assert torch.allclose(project(item["center_cam"].double(), K), uv, atol=1e-3)
    R = allocentric_to_egocentric(
        rotation_6d_to_matrix(item["rot6d_allo"].double()), uv[0], uv[1], K
    )
    assert torch.allclose(R, item["R_cam"].double(), atol=1e-5)


def test_targets_decode_to_the_ground_truth(root):
    virtual = VirtualCamera(focal_px=400.0, width_px=320.0)
    ds = GroundingDataset(root, "train", hr_size=HR, lr_size=LR, virtual=virtual)
    data = read_dataset(root)
    for index in range(min(len(ds), 6)):
        item = ds[index]
        _check_targets(item, virtual)
        target = data.target(ds.queries[index])
        np.testing.assert_allclose(item["dims_lwh"].numpy(), target.dims_lwh, rtol=1e-6)
        assert item["answer"] == target.category_name
        # the depth map holds the target's virtual depth (or a nearer one) at its centre cell
        cu, cv = item["center_uv"].tolist()
        grid = item["depth_map"][0]
        row = min(int(cv * grid.shape[0]), grid.shape[0] - 1)
        col = min(int(cu * grid.shape[1]), grid.shape[1] - 1)
        if 0 <= cu < 1 and 0 <= cv < 1:
            assert 0 < float(grid[row, col]) <= float(item["virtual_depth"][0]) + 1e-4


def test_mirror_keeps_targets_consistent(root):
    ds = GroundingDataset(root, "train", hr_size=HR, lr_size=LR)
    plain, mirrored = ds.get(0), ds.get(0, mirror=True)
    _check_targets(mirrored, VirtualCamera())
    diff = (mirrored["image_hr"] - plain["image_hr"].flip(-1)).abs().mean()
    assert float(diff) < 0.02  # the picture is mirrored (up to resampling)
    assert float(mirrored["center_cam"][0]) == pytest.approx(
        -float(plain["center_cam"][0]), abs=1e-6
    )
    assert float(mirrored["virtual_depth"][0]) == pytest.approx(float(plain["virtual_depth"][0]))
    # the mirrored 3D box is the mirror image of the original box
    corners = box3d_corners(
        mirrored["center_cam"].double(), mirrored["dims_lwh"].double(), mirrored["R_cam"].double()
    )
    original = box3d_corners(
        plain["center_cam"].double(), plain["dims_lwh"].double(), plain["R_cam"].double()
    )
    flipped = original * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    dist = torch.cdist(corners, flipped).min(dim=1).values
    assert float(dist.max()) < 1e-4
    assert float(torch.det(mirrored["R_cam"].double())) == pytest.approx(1.0, abs=1e-5)


def test_mirror_text_and_depth_map_order():
    assert mirror_text("Find the chair to the left of the Right lamp.") == (
        "Find the chair to the right of the Left lamp."
    )
    assert mirror_text("leftover bright") == "leftover bright"

    class Box:
        def __init__(self, box):
            self.bbox2D_tight = np.asarray(box, dtype=float)

    near, far = Box([0, 0, 50, 50]), Box([25, 25, 100, 100])
    grid = object_depth_map([near, far], [2.0, 9.0], (100, 100), (4, 4))
    assert grid[0, 0] == 2.0 and grid[1, 1] == 2.0  # nearer over farther
    assert grid[3, 3] == 9.0
    assert grid[0, 3] == 0.0 and grid[3, 0] == 0.0


def test_split_specs_and_query_types(root):
    all_train = GroundingDataset(root, "train", hr_size=HR, lr_size=LR)
    captions = GroundingDataset(root, "train", hr_size=HR, lr_size=LR, query_types=["caption"])
    assert 0 < len(captions) < len(all_train)
    assert {captions[i]["query_type"] for i in range(len(captions))} == {"caption"}
    source = GroundingDataset(root, "train@kitti_like", hr_size=HR, lr_size=LR)
    assert all(q.camera_group == "kitti_like" for q in source.queries)
    assert len(GroundingDataset(root, "test", hr_size=HR, lr_size=LR)) == 0


def test_augmented_items_are_valid(root):
    ds = GroundingDataset(root, "val", hr_size=HR, lr_size=LR, augment=True)
    torch.manual_seed(0)
    for index in range(min(len(ds), 4)):
        _check_targets(ds[index], VirtualCamera())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hr_size": (100, 128)}, "multiples of depth_stride"),
        ({"lr_size": 0}, "lr_size must be >= 1"),
        ({"query_types": ["riddle"]}, r"query_types \['riddle'\] unknown"),
        ({"split": "dev"}, "split must be one of"),
    ],
)
def test_errors(root, kwargs, match):
    args = {"split": "train", "hr_size": HR, "lr_size": LR, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        GroundingDataset(root, **args)


def test_collate_errors():
    with pytest.raises(InvalidInputError, match="at least one item"):
        collate_grounding([])
    with pytest.raises(InvalidInputError, match="different keys"):
        collate_grounding([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
