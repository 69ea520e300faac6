"""ImageDataset / GroundingDataset / collate_grounding: the training contract, targets, mirror."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from llmi3d_core.data.dataset import (
    MAX_OBJECTS,
    GroundingDataset,
    ImageDataset,
    ObjectTargets,
    collate_grounding,
    dense_targets,
    load_rgb,
    mirror_text,
)
from llmi3d_core.data.format import QueryRecord
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.data.synth.shapes import CATEGORIES, COLORS
from llmi3d_core.errors import DataFormatError, InvalidInputError
from llmi3d_core.geometry import box3d_corners, centre_segment, project, virtual_to_real_depth
from llmi3d_core.letterbox import Letterbox
from llmi3d_core.model import ModelConfig, get_preset
from llmi3d_core.model.spatial_relations import ANCHORS
from llmi3d_core.rotation import allocentric_to_egocentric, rotation_6d_to_matrix

HR, LR = (96, 128), 64
CONFIG = get_preset("tiny").replace(**{"high_res.image_size": HR, "low_res.image_size": LR})
GRID = (HR[0] // 8, HR[1] // 8)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    config = SynthConfig(
        num_images=6,
        seed=2,
        camera_groups=("vga_normal", "kitti_like"),
        split_fractions=(0.5, 0.5, 0.0),
        novel_fraction=0.3,
    )
    return generate_dataset(config, tmp_path_factory.mktemp("ds") / "ds", progress=False)


def test_item_keys_shapes_and_types(root):
    ds = GroundingDataset(root, "train", CONFIG)
    assert len(ds) > 0
    item = ds[0]
    h, w = GRID
    shapes = {
        "image_hr": (3, *HR),
        "image_lr": (3, LR, LR),
        "K": (3, 3),
        "image_size": (2,),
        "letterbox": (4,),
        "heatmap": (1, h, w),
        "box_prompt": (4,),
        "point_prompt": (2,),
        "obj_center_uv": (MAX_OBJECTS, 2),
        "obj_box2d": (MAX_OBJECTS, 4),
        "obj_keypoints": (MAX_OBJECTS, 2),
        "obj_virtual_depth": (MAX_OBJECTS,),
        "obj_center_cam": (MAX_OBJECTS, 3),
        "obj_dims_lwh": (MAX_OBJECTS, 3),
        "obj_rot6d_allo": (MAX_OBJECTS, 6),
        "obj_R_cam": (MAX_OBJECTS, 3, 3),
        "center_uv": (2,),
        "virtual_depth": (1,),
        "dims_lwh": (3,),
        "rot6d_allo": (6,),
        "box2d": (4,),
        "keypoints": (2,),
        "center_cam": (3,),
        "R_cam": (3, 3),
    }
    for key, shape in shapes.items():
        assert isinstance(item[key], torch.Tensor) and item[key].dtype == torch.float32, key
        assert tuple(item[key].shape) == shape, key
    integers = {"assign": (h * w,), "obj_category": (MAX_OBJECTS,), "obj_color": (MAX_OBJECTS,),
                "target_index": (), "query_category": (), "query_color": (), "query_relation": (),
                "anchor_category": (ANCHORS,), "anchor_color": (ANCHORS,)}  # fmt: skip
    for key, shape in integers.items():
        assert item[key].dtype == torch.int64 and tuple(item[key].shape) == shape, key
    for key in ("heat_ignore", "obj_valid", "target_mask"):
        assert item[key].dtype == torch.bool, key
    assert item["target_mask"].shape == (MAX_OBJECTS,)
    for key in ("query", "answer", "query_type", "query_id", "camera_group"):
        assert isinstance(item[key], str), key
    assert isinstance(item["novel_category"], bool)
    assert item["image_size"].tolist() == [HR[1], HR[0]]  # the canvas (W, H)
    assert float(item["image_hr"].min()) >= 0.0 and float(item["image_hr"].max()) <= 1.0
    batch = collate_grounding([ds[0], ds[1]])
    assert batch["image_hr"].shape == (2, 3, *HR)
    assert batch["query"] == [ds[0]["query"], ds[1]["query"]]
    assert batch["novel_category"] == [ds[0]["novel_category"], ds[1]["novel_category"]]


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory) -> Path:
    """Images with a negative and a multi-target query each (QueryConfig counts of 1)."""
    config = SynthConfig(
        num_images=8,
        seed=6,
        camera_groups=("vga_normal",),
        split_fractions=(1.0, 0.0, 0.0),
        queries=QueryConfig(negatives_per_image=1, multi_target_per_image=1),
    )
    return generate_dataset(config, tmp_path_factory.mktemp("mixed") / "ds", progress=False)


# a config that names every category and colour of the generator, as `llmi3d train` fills in
NAMED = CONFIG.replace(
    **{
        "detector.categories": sorted(c.name for c in CATEGORIES),
        "detector.colors": sorted(COLORS),
    }
)


def test_target_mask_and_index_of_negative_and_multi_target_queries(mixed_root):
    ds = GroundingDataset(mixed_root, "train", CONFIG)
    data = read_dataset(mixed_root)
    kinds = {"negative": 0, "multi": 0, "single": 0}
    for index, query in enumerate(ds.queries):
        item = ds[index]
        ids = [o.object_id for o in data.image(query.image_id).objects]
        expected = [ids.index(i) for i in query.target_object_ids]
        assert torch.nonzero(item["target_mask"])[:, 0].tolist() == sorted(expected)
        assert int(item["target_index"]) == (expected[0] if expected else -1)
        assert bool(item["obj_valid"][item["target_mask"]].all())  # targets are real objects
        if query.is_negative:
            kinds["negative"] += 1
            # the target fields are object 0's, unused (a placeholder of the right shape)
            assert torch.equal(item["center_cam"], item["obj_center_cam"][0])
        elif query.is_multi_target:
            kinds["multi"] += 1
            assert len(expected) >= 2
            # the per-object arrays hold every target; the target fields are the first one's
            for slot, obj in zip(expected, data.targets(query), strict=True):
                np.testing.assert_allclose(
                    item["obj_center_cam"][slot].numpy(), obj.center_cam, rtol=1e-5
                )
            assert torch.equal(item["center_cam"], item["obj_center_cam"][expected[0]])
        else:
            kinds["single"] += 1
    assert kinds["negative"] >= 4 and kinds["multi"] >= 2 and kinds["single"] >= 8, kinds
    batch = collate_grounding([ds[i] for i in range(4)])
    assert batch["target_mask"].shape == (4, MAX_OBJECTS) and batch["target_index"].shape == (4,)


def _named(query: QueryRecord, text: str, targets, categories, colors) -> tuple[int, int]:
    """The category and colour a query names, by the rules of GroundingDataset.named_attributes."""
    category = len(categories)
    if query.type in ("caption", "question") and query.answer in categories:
        category = categories.index(query.answer)
    words = text.lower().replace("?", " ").replace(".", " ").replace(",", " ").split()
    color = len(colors)
    if targets:
        own = targets[0].attributes.get("color", "")
        if own in words:
            color = colors.index(own)
    else:
        named = [w for w in words if w in colors]
        color = colors.index(named[0]) if named else len(colors)
    return category, color


def test_query_category_and_color(mixed_root):
    ds = GroundingDataset(mixed_root, "train", NAMED)
    data = read_dataset(mixed_root)
    categories, colors = list(NAMED.detector.categories), list(NAMED.detector.colors)
    any_category, any_color = len(categories), len(colors)
    seen = set()
    for index, query in enumerate(ds.queries):
        item = ds[index]
        got = (int(item["query_category"]), int(item["query_color"]))
        expected = _named(query, item["query"], data.targets(query), categories, colors)
        assert got == expected, (query.text, query.type, got, expected)
        if query.type in ("box_prompt", "point_prompt"):
            assert got[0] == any_category  # a prompt names no category
        else:
            assert categories[got[0]] == query.answer  # negatives: the category asked for
        seen.add(("category" if got[0] < any_category else "any", query.is_negative))
        seen.add(("color" if got[1] < any_color else "no color", query.is_negative))
    # the set exercises named and unnamed colours, of positive and negative queries
    assert {("color", False), ("no color", False), ("color", True), ("no color", True)} <= seen
    # hand values: a negative names its first colour word
    query = QueryRecord("q", "i", "train", "caption", "the red chair", "chair")
    chair, red = categories.index("chair"), colors.index("red")
    # (text order, not the list's: "blue" sorts first but names the anchor)
    out = ds.named_attributes(query, "the red chair left of the blue table", [])
    assert (int(out["query_category"]), int(out["query_color"])) == (chair, red)
    # without the category and colour heads (the tiny preset) every query names "any"
    plain = GroundingDataset(mixed_root, "train", CONFIG)[0]
    assert (int(plain["query_category"]), int(plain["query_color"])) == (0, 0)


def _check_targets(item, config: ModelConfig) -> None:
    """The targets decode back to the stored 3D box with the geometry functions (canvas frame)."""
    virtual = config.virtual_camera
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
    top, bottom = centre_segment(item["center_cam"].double(), item["dims_lwh"].double(), R)
    rows = torch.stack([project(top, K)[1], project(bottom, K)[1]]) / H
    assert torch.allclose(rows, item["keypoints"].double(), atol=1e-5)


def test_targets_decode_to_the_ground_truth(root):
    config = CONFIG.replace(virtual_focal_px=400.0, virtual_width_px=320.0)
    ds = GroundingDataset(root, "train", config)
    data = read_dataset(root)
    for index in range(min(len(ds), 6)):
        item = ds[index]
        _check_targets(item, config)
        target = data.target(ds.queries[index])
        np.testing.assert_allclose(item["dims_lwh"].numpy(), target.dims_lwh, rtol=1e-6)
        assert item["answer"] == target.category_name
        # the target's own fields are its row of the per-object arrays
        t = int(item["target_index"])
        assert torch.nonzero(item["target_mask"])[:, 0].tolist() == [t]
        assert torch.equal(item["center_cam"], item["obj_center_cam"][t])
        assert float(item["virtual_depth"][0]) == float(item["obj_virtual_depth"][t])


def test_pixel_targets_are_letterboxed_into_the_canvas(root):
    """K, boxes and prompts are those of the canvas the image was letterboxed into."""
    data = read_dataset(root)
    ds = GroundingDataset(root, "train", CONFIG, dataset=data)
    kinds = set()
    for index, query in enumerate(ds.queries):
        record = data.image(query.image_id)
        letterbox = Letterbox.fit(record.width, record.height, HR[1], HR[0])
        item = ds[index]
        np.testing.assert_allclose(item["K"].numpy(), letterbox.intrinsics(record.K), rtol=1e-6)
        assert item["letterbox"].numpy() == pytest.approx(letterbox.as_array(), rel=1e-6)
        box = letterbox.boxes_to_canvas(data.target(query).bbox2D_tight)
        canvas = np.array([HR[1], HR[0]] * 2)
        assert item["box2d"].numpy() == pytest.approx(box / canvas, abs=1e-6)
        if query.box_prompt is not None:
            prompt = letterbox.boxes_to_canvas(query.box_prompt) / canvas
            assert item["box_prompt"].numpy() == pytest.approx(prompt, abs=1e-6)
            kinds.add("box")
        else:
            assert bool(item["box_prompt"].isnan().all())
        if query.point_prompt is not None:
            prompt = letterbox.points_to_canvas(query.point_prompt) / canvas[:2]
            assert item["point_prompt"].numpy() == pytest.approx(prompt, abs=1e-6)
            kinds.add("point")
        else:
            assert bool(item["point_prompt"].isnan().all())
    assert kinds == {"box", "point"}


def test_dense_targets_of_items(root):
    """Each supervised object peaks at its centre cell, owns that cell and cells inside its box."""
    ds = GroundingDataset(root, "train", CONFIG)
    h, w = GRID
    for index in range(len(ds)):
        item = ds[index]
        heat, assign = item["heatmap"][0], item["assign"].view(h, w)
        valid = item["obj_valid"]
        for obj in torch.nonzero(valid)[:, 0].tolist():
            u, v = (item["obj_center_uv"][obj] * torch.tensor([w, h])).tolist()
            col, row = min(max(int(u), 0), w - 1), min(max(int(v), 0), h - 1)
            assert float(heat[row, col]) == pytest.approx(1.0)
            assert int(assign[row, col]) == obj
            assert not bool(item["heat_ignore"][0, row, col])
            rows, cols = torch.nonzero(assign == obj, as_tuple=True)
            assert bool(((rows - row).abs() <= 1).all() and ((cols - col).abs() <= 1).all())
        owners = set(item["assign"][item["assign"] >= 0].tolist())
        assert owners <= set(torch.nonzero(valid)[:, 0].tolist())
        assert float(heat.max()) <= 1.0 and float(heat.min()) >= 0.0


def test_held_out_categories_are_ignored_not_background(root):
    data = read_dataset(root)
    novel = set(data.info.novel_categories)
    assert novel
    images = ImageDataset(root, "train", CONFIG, dataset=data)
    seen = 0
    for index, record in enumerate(images.records):
        item = images[index]
        for obj, record_obj in enumerate(record.objects[:MAX_OBJECTS]):
            if record_obj.category_name in novel:
                seen += 1
                assert not bool(item["obj_valid"][obj])
                assert obj not in set(item["assign"].tolist())
    assert seen > 0, "the test set should hold a held-out object in a training image"
    assert any(bool(images[i]["heat_ignore"].any()) for i in range(len(images)))


def _targets(centres, boxes, depths, ignore=None) -> ObjectTargets:
    n = len(centres)
    return ObjectTargets(
        center_px=np.asarray(centres, float), box_px=np.asarray(boxes, float),
        keypoints_px=np.zeros((n, 2)), virtual_depth=np.ones(n),
        center_cam=np.column_stack([np.zeros((n, 2)), depths]), dims_lwh=np.ones((n, 3)),
        rot6d_allo=np.zeros((n, 6)), R_cam=np.tile(np.eye(3), (n, 1, 1)),
        category=np.zeros(n, int), color=np.full(n, -1),
        ignore=np.zeros(n, bool) if ignore is None else np.asarray(ignore),
    )  # fmt: skip


def test_dense_targets_hand_values():
    # two objects on a 4 x 6 map (stride 8): the nearer one (1) overlaps the farther one (0)
    targets = _targets(
        centres=[[20.0, 12.0], [28.0, 12.0]],
        boxes=[[0.0, 0.0, 40.0, 31.0], [16.0, 0.0, 40.0, 24.0]],
        depths=[9.0, 2.0],
    )
    heat, ignore, assign = dense_targets(targets, (4, 6), 8.0)
    grid = assign.reshape(4, 6)
    assert heat[1, 2] == 1.0 and heat[1, 3] == 1.0  # the centre cells
    assert grid[1, 2] == 0 and grid[1, 3] == 1  # each keeps its own centre cell
    assert grid[0, 3] == 1 and grid[2, 3] == 1  # nearer over farther in shared neighbours
    assert grid[1, 1] == 0 and grid[0, 1] == 0
    assert grid[3, 3] == -1 and grid[1, 5] == -1  # outside the 3 x 3 neighbourhood
    assert not ignore.any()
    # an ignored (held-out) object masks its box, except other objects' centre cells
    held = _targets(
        centres=[[20.0, 12.0], [28.0, 12.0]],
        boxes=[[0.0, 0.0, 40.0, 31.0], [16.0, 0.0, 40.0, 24.0]],
        depths=[2.0, 9.0],
        ignore=[False, True],
    )
    heat, ignore, assign = dense_targets(held, (4, 6), 8.0)
    assert heat[1, 3] < 1.0 and (assign != 1).all()
    assert ignore[0, 3] and ignore[2, 4] and not ignore[1, 2]


def test_mirror_keeps_targets_consistent(root):
    ds = GroundingDataset(root, "train", CONFIG)
    index = next(i for i, q in enumerate(ds.queries) if q.camera_group == "vga_normal")
    plain, mirrored = ds.get(index), ds.get(index, mirror=True)
    _check_targets(mirrored, CONFIG)
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
    # every object moves with the picture: u -> (W - 1) - u in canvas pixels
    valid = plain["obj_valid"]
    assert torch.equal(mirrored["obj_valid"], valid)
    width = float(plain["image_size"][0])
    u_plain = plain["obj_center_uv"][valid, 0] * width
    u_mirrored = mirrored["obj_center_uv"][valid, 0] * width
    torch.testing.assert_close(u_mirrored, (width - 1) - u_plain, rtol=0, atol=1e-3)


def test_mirror_text():
    assert mirror_text("Find the chair to the left of the Right lamp.") == (
        "Find the chair to the right of the Left lamp."
    )
    assert mirror_text("leftover bright") == "leftover bright"


def test_image_dataset_has_one_item_per_image(root):
    data = read_dataset(root)
    images = ImageDataset(root, "train", CONFIG, dataset=data)
    queries = GroundingDataset(root, "train", CONFIG, dataset=data)
    assert [r.image_id for r in images.records] == sorted({q.image_id for q in queries.queries})
    item = images[0]
    assert item["image_id"] == images.records[0].image_id
    assert "query" not in item and "target_index" not in item
    assert int(item["obj_valid"].sum()) <= len(images.records[0].objects)


def test_split_specs_and_query_types(root):
    all_train = GroundingDataset(root, "train", CONFIG)
    captions = GroundingDataset(root, "train", CONFIG, query_types=["caption"])
    assert 0 < len(captions) < len(all_train)
    assert {captions[i]["query_type"] for i in range(len(captions))} == {"caption"}
    source = GroundingDataset(root, "train@kitti_like", CONFIG)
    assert all(q.camera_group == "kitti_like" for q in source.queries)
    assert len(GroundingDataset(root, "test", CONFIG)) == 0


def test_augmented_items_are_valid(root):
    ds = GroundingDataset(root, "val", CONFIG, augment=True)
    torch.manual_seed(0)
    for index in range(min(len(ds), 4)):
        _check_targets(ds[index], CONFIG)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_types": ["riddle"]}, r"query_types \['riddle'\] unknown"),
        ({"split": "dev"}, "split must be one of"),
    ],
)
def test_errors(root, kwargs, match):
    args = {"split": "train", **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        GroundingDataset(root, config=CONFIG, **args)


def test_picture_of_the_wrong_size_is_reported(root):
    data = read_dataset(root)
    record = data.images[0]
    wrong = dataclasses.replace(record, width=record.width + 2)
    with pytest.raises(DataFormatError, match=r"but images.jsonl says"):
        load_rgb(data.root / record.file_name, wrong)
    with pytest.raises(DataFormatError, match=r"missing or not a readable image"):
        load_rgb(data.root / "images" / "nothing.png", record)


def test_collate_errors():
    with pytest.raises(InvalidInputError, match="at least one item"):
        collate_grounding([])
    with pytest.raises(InvalidInputError, match="different keys"):
        collate_grounding([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
