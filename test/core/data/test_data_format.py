"""Dataset format: records round-trip through writer and reader; bad files name file and line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from llmi3d_core.data.format import DatasetInfo, ImageRecord, ObjectRecord, QueryRecord
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.splits import select_queries
from llmi3d_core.data.writer import DatasetWriter, image_file_name
from llmi3d_core.errors import DataFormatError, InvalidInputError

K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])


def make_object(object_id: str, center=(0.5, 0.8, 4.0), dims_whl=(0.6, 1.0, 0.8)) -> ObjectRecord:
    center = np.asarray(center, dtype=float)
    w, h, length = dims_whl
    corners = (
        np.array(
            [
                [sx * length / 2, sy * h / 2, sz * w / 2]
                for sx, sy, sz in itertools.product((-1, 1), repeat=3)
            ]
        )
        + center
    )
    uv = K @ center
    return ObjectRecord(
        object_id=object_id,
        category_name="chair",
        attributes={"color": "red", "size": "small"},
        center_cam=center,
        dimensions=np.asarray(dims_whl, dtype=float),
        R_cam=np.eye(3),
        bbox2D_tight=np.array([300.0, 200.0, 400.0, 330.0]),
        bbox2D_proj=np.array([290.0, 190.0, 410.0, 340.0]),
        bbox3D_cam=corners,
        center_2D=uv[:2] / uv[2],
        visibility=0.9,
        truncation=0.0,
    )


def make_image(image_id: str, n_objects: int = 2) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        file_name=image_file_name(image_id),
        width=64,
        height=48,
        K=K,
        scene="indoor",
        camera_group="vga",
        objects=[make_object(f"{image_id}_{k}") for k in range(n_objects)],
    )


def make_query(query_id: str, image_id: str, split: str = "train", novel: bool = False):
    return QueryRecord(
        query_id=query_id,
        image_id=image_id,
        split=split,
        type="caption",
        text="the red chair",
        answer="chair",
        target_object_id=f"{image_id}_0",
        novel_category=novel,
        camera_group="vga",
        extra={"relation": "none"},
    )


def write_small(root: Path) -> Path:
    info = DatasetInfo(
        name="tiny",
        seed=3,
        camera_groups={"vga": {"domain": "source"}, "kitti_like": {"domain": "target"}},
    )
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    with DatasetWriter(root, info) as writer:
        writer.add_image(make_image("a"), pixels)
        writer.add_image(make_image("b"), pixels)
        writer.add_query(make_query("q0", "a"))
        writer.add_query(make_query("q1", "b", split="test", novel=True))
    return root


def test_round_trip(tmp_path):
    root = write_small(tmp_path / "ds")
    ds = read_dataset(root, check_files=True)
    assert ds.info.categories == ["chair"]
    assert [im.image_id for im in ds.images] == ["a", "b"]
    obj = ds.image("a").objects[0]
    np.testing.assert_allclose(obj.dims_lwh, [0.8, 0.6, 1.0])
    np.testing.assert_allclose(obj.center_2D, make_object("x").center_2D, atol=1e-5)
    assert ds.queries[0].extra == {"relation": "none"}
    assert ds.target(ds.queries[1]).object_id == "b_0"
    assert ds.image_path("a").is_file()


def test_select_queries(tmp_path):
    ds = read_dataset(write_small(tmp_path / "ds"))
    assert [q.query_id for q in select_queries(ds, "train")] == ["q0"]
    assert [q.query_id for q in select_queries(ds, "test:novel")] == ["q1"]
    assert select_queries(ds, "test:base") == []
    assert [q.query_id for q in select_queries(ds, "train@source")] == ["q0"]
    assert select_queries(ds, "train@target") == []
    with pytest.raises(InvalidInputError, match="split must be one of"):
        select_queries(ds, "training")
    with pytest.raises(InvalidInputError, match="neither a camera group"):
        select_queries(ds, "train@nowhere")
    with pytest.raises(InvalidInputError, match="':novel' or ':base'"):
        select_queries(ds, "train:old")


def _corrupt(path: Path, line: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines) + "\n")


def _edit_json(fn):
    def edit(text: str) -> str:
        data = json.loads(text)
        fn(data)
        return json.dumps(data)

    return edit


@pytest.mark.parametrize(
    ("file", "line", "edit", "match"),
    [
        ("images.jsonl", 2, lambda s: s[:-5], r"images.jsonl:2: not valid JSON"),
        (
            "images.jsonl",
            2,
            _edit_json(lambda d: d.pop("K")),
            r"images.jsonl:2: image record is missing key",
        ),
        (
            "images.jsonl",
            1,
            _edit_json(lambda d: d["objects"][1].__setitem__("dimensions", [1, -1, 1])),
            r"images.jsonl:1: object 'a_1': dimensions",
        ),
        (
            "images.jsonl",
            2,
            _edit_json(
                lambda d: d["objects"][0].__setitem__("R_cam", [[2, 0, 0], [0, 1, 0], [0, 0, 1]])
            ),
            r"images.jsonl:2: object 'b_0': R_cam must be a rotation",
        ),
        (
            "images.jsonl",
            1,
            _edit_json(lambda d: d["objects"][0].__setitem__("center_cam", [0, 0, 9])),
            r"images.jsonl:1: .*bbox3D_cam corners are centred",
        ),
        (
            "images.jsonl",
            1,
            _edit_json(lambda d: d["objects"][0].__setitem__("bbox2D_tight", [5, 5, 1, 1])),
            r"images.jsonl:1: .*bbox2D_tight must be",
        ),
        (
            "images.jsonl",
            2,
            _edit_json(lambda d: d.__setitem__("image_id", "a")),
            r"images.jsonl:2: image_id 'a' repeats",
        ),
        (
            "queries.jsonl",
            2,
            _edit_json(lambda d: d.__setitem__("split", "dev")),
            r"queries.jsonl:2: split must be",
        ),
        (
            "queries.jsonl",
            1,
            _edit_json(lambda d: d.__setitem__("target_object_id", "zz")),
            r"queries.jsonl:1: target_object_id 'zz' is not an object",
        ),
        (
            "queries.jsonl",
            2,
            _edit_json(lambda d: d.__setitem__("type", "point_prompt")),
            r"queries.jsonl:2: a query of type 'point_prompt' needs",
        ),
        (
            "queries.jsonl",
            1,
            _edit_json(lambda d: d.__setitem__("image_id", "c")),
            r"queries.jsonl:1: image_id 'c'",
        ),
    ],
)
def test_malformed_file_names_file_and_line(tmp_path, file, line, edit, match):
    root = write_small(tmp_path / "ds")
    _corrupt(root / file, line, edit)
    with pytest.raises(DataFormatError, match=match):
        read_dataset(root)


def test_dataset_json_errors(tmp_path):
    root = write_small(tmp_path / "ds")
    info = json.loads((root / "dataset.json").read_text())
    info["format_version"] = 7
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DataFormatError, match=r"dataset.json: format_version 7 is not supported"):
        read_dataset(root)
    (root / "dataset.json").unlink()
    with pytest.raises(DataFormatError, match=r"dataset\.json: not found"):
        read_dataset(root)


def test_writer_errors(tmp_path):
    root = write_small(tmp_path / "ds")
    with pytest.raises(InvalidInputError, match="already holds"):
        DatasetWriter(root, DatasetInfo(name="again"))
    writer = DatasetWriter(root, DatasetInfo(name="again"), overwrite=True)
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    writer.add_image(make_image("a"), pixels)
    with pytest.raises(InvalidInputError, match="image_id 'a' was already written"):
        writer.add_image(make_image("a"), pixels)
    with pytest.raises(InvalidInputError, match=r"picture is \(10, 10\)"):
        writer.add_image(make_image("c"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="image 'z' has not been added"):
        writer.add_query(make_query("q", "z"))
    bad = make_image("d")
    bad.objects[0].visibility = 1.5
    with pytest.raises(InvalidInputError, match=r"visibility must be in \[0, 1\]"):
        writer.add_image(bad, pixels)
    with pytest.raises(InvalidInputError, match="no picture given"):
        writer.add_image(make_image("e"))
    writer.close()
    assert read_dataset(root).info.name == "again"


# ------------------------------------------------------------------------------------------
# Queries with no target (negative) or several (multi-target)
# ------------------------------------------------------------------------------------------


def write_with_target_counts(root: Path) -> Path:
    """Image "a" (3 objects) with a single-target, a negative and a multi-target query."""
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    with DatasetWriter(root, DatasetInfo(name="counts", seed=1)) as writer:
        writer.add_image(make_image("a", n_objects=3), pixels)
        writer.add_query(make_query("single", "a"))
        negative = QueryRecord(
            query_id="neg",
            image_id="a",
            split="test",
            type="caption",
            text="Find the fire hydrant.",
            answer="fire hydrant",
            camera_group="vga",
            extra={"relation": "none", "negative": "absent"},
        )
        writer.add_query(negative)
        multi = QueryRecord(
            query_id="multi",
            image_id="a",
            split="test",
            type="caption",
            text="All the chairs.",
            answer="chair",
            camera_group="vga",
            target_object_ids=("a_2", "a_0"),
            extra={"relation": "all"},
        )
        writer.add_query(multi)
    return root


def test_zero_one_or_several_targets_round_trip(tmp_path):
    root = write_with_target_counts(tmp_path / "ds")
    lines = [json.loads(line) for line in (root / "queries.jsonl").read_text().splitlines()]
    # single-target lines keep the one-key layout; the others say null and list their targets
    assert lines[0]["target_object_id"] == "a_0" and "target_object_ids" not in lines[0]
    assert lines[1]["target_object_id"] is None and lines[1]["target_object_ids"] == []
    assert lines[2]["target_object_id"] is None and lines[2]["target_object_ids"] == ["a_2", "a_0"]
    ds = read_dataset(root)
    single, negative, multi = ds.queries
    assert single.target_object_ids == ("a_0",) and single.target_object_id == "a_0"
    assert ds.target(single).object_id == "a_0"
    assert [o.object_id for o in ds.targets(single)] == ["a_0"]
    assert negative.target_object_ids == () and negative.target_object_id == ""
    assert negative.is_negative and not negative.is_multi_target
    assert ds.targets(negative) == []
    assert negative.extra == {"relation": "none", "negative": "absent"}
    assert multi.target_object_ids == ("a_2", "a_0") and multi.target_object_id == ""
    assert multi.is_multi_target and not multi.is_negative
    assert [o.object_id for o in ds.targets(multi)] == ["a_2", "a_0"]
    for query in (negative, multi):
        with pytest.raises(InvalidInputError, match=r"use Dataset\.targets\(\)"):
            ds.target(query)


def test_query_record_fills_either_target_field():
    one = make_query("q", "a")
    assert one.target_object_ids == ("a_0",)
    also_one = QueryRecord("q", "a", "train", "caption", "t", "chair", target_object_ids=["a_1"])
    assert also_one.target_object_id == "a_1" and also_one.target_object_ids == ("a_1",)
    with pytest.raises(InvalidInputError, match="differs from the single entry"):
        QueryRecord("q", "a", "train", "caption", "t", "chair", "a_0", target_object_ids=("a_1",))
    with pytest.raises(InvalidInputError, match="must be '' for a query with 2 targets"):
        QueryRecord("q", "a", "train", "caption", "t", "c", "a_0", target_object_ids=("a_0", "a_1"))


@pytest.mark.parametrize(
    ("line", "edit", "match"),
    [
        (
            2,
            lambda d: d.pop("target_object_ids"),
            r"queries.jsonl:2: target_object_id is null but target_object_ids is missing",
        ),
        (
            3,
            lambda d: d.__setitem__("target_object_ids", ["a_0", "zz"]),
            r"queries.jsonl:3: target_object_ids\[1\] 'zz' is not an object of image 'a'",
        ),
        (
            3,
            lambda d: d.__setitem__("target_object_ids", ["a_0", "a_0"]),
            r"queries.jsonl:3: target_object_ids repeats an object",
        ),
        (
            3,
            lambda d: d.__setitem__("target_object_ids", "a_0"),
            r"queries.jsonl:3: target_object_ids must be a list of non-empty strings",
        ),
        (
            3,
            lambda d: d.__setitem__("target_object_id", "a_0"),
            r"queries.jsonl:3: target_object_id must be null for a query with 2 targets",
        ),
        (
            1,
            lambda d: d.__setitem__("target_object_ids", ["a_1"]),
            r"queries.jsonl:1: target_object_id 'a_0' differs from the single entry",
        ),
        (
            2,
            lambda d: d.update(type="box_prompt", box_prompt=[1, 1, 9, 9]),
            r"queries.jsonl:2: a negative query \(no target\) must be of type "
            r"\['caption', 'question'\], got 'box_prompt'",
        ),
        (
            2,
            lambda d: d.__setitem__("point_prompt", [3, 4]),
            r"queries.jsonl:2: a negative query \(no target\) has no box_prompt or point_prompt",
        ),
    ],
)
def test_malformed_target_lists_name_file_and_line(tmp_path, line, edit, match):
    root = write_with_target_counts(tmp_path / "ds")
    _corrupt(root / "queries.jsonl", line, _edit_json(edit))
    with pytest.raises(DataFormatError, match=match):
        read_dataset(root)


def test_single_entry_target_list_is_read_as_single(tmp_path):
    root = write_with_target_counts(tmp_path / "ds")
    _corrupt(
        root / "queries.jsonl",
        1,
        _edit_json(lambda d: d.update(target_object_id=None, target_object_ids=["a_1"])),
    )
    query = read_dataset(root).queries[0]
    assert query.target_object_id == "a_1" and query.target_object_ids == ("a_1",)


def test_writer_checks_every_target(tmp_path):
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    with DatasetWriter(tmp_path / "ds", DatasetInfo(name="w")) as writer:
        writer.add_image(make_image("a"), pixels)
        multi = QueryRecord("m", "a", "test", "caption", "All the chairs.", "chair",
                            target_object_ids=("a_0", "b_9"))  # fmt: skip
        with pytest.raises(InvalidInputError, match="image 'a' has no object 'b_9'"):
            writer.add_query(multi)
        negative = QueryRecord("n", "a", "test", "point_prompt", "What is here?", "lamp",
                               point_prompt=np.array([3.0, 4.0]))  # fmt: skip
        with pytest.raises(InvalidInputError, match="a negative query"):
            writer.add_query(negative)
