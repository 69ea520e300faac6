"""Omni3D JSON -> our dataset format, checked against hand-computed values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from llmi3d_core.cli import main
from llmi3d_core.data.convert import omni3d, omni3d_json
from llmi3d_core.data.convert.common import template_caption
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.errors import DataFormatError, InvalidInputError

FIXTURES = Path(__file__).parent / "fixtures"
OMNI_JSON = FIXTURES / "omni3d_sunrgbd_val.json"
CAPTIONS = FIXTURES / "omni3d_captions.jsonl"


def _picture(width: int, height: int, seed: int) -> np.ndarray:
    """A small BGR drawing: noise background and a filled rectangle."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    cv2.rectangle(image, (width // 4, height // 4), (width // 2, height // 2), (0, 0, 255), -1)
    return image


def _images_root(tmp_path: Path, data: dict) -> Path:
    root = tmp_path / "datasets"
    for index, image in enumerate(data["images"]):
        path = root / image["file_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), _picture(image["width"], image["height"], index))
    return root


@pytest.fixture
def omni(tmp_path: Path) -> tuple[Path, Path]:
    """(Omni3D JSON, images root) in tmp_path, pictures drawn to the JSON's sizes."""
    json_path = tmp_path / "SUNRGBD_val.json"
    shutil.copy(OMNI_JSON, json_path)
    return json_path, _images_root(tmp_path, json.loads(OMNI_JSON.read_text()))


def _edited(tmp_path: Path, edit) -> Path:
    """A copy of the fixture JSON changed by edit(data)."""
    data = json.loads(OMNI_JSON.read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def test_load_omni3d_parses_the_fixture():
    parsed = omni3d_json.load_omni3d(OMNI_JSON)
    assert sorted(parsed.images) == [101, 102]
    assert parsed.categories[5] == "sofa"
    assert [a.id for a in parsed.annotations] == [1001, 1002, 1003, 1005, 1006]
    assert parsed.num_invalid3d == 1  # the lamp, valid3D false
    table = parsed.annotations[2]
    assert table.bbox2D_tight is None and table.visibility is None and table.truncation is None
    assert table.dimensions.tolist() == [0.8, 0.7, 1.5]
    assert parsed.annotations[3].behind_camera is True
    assert parsed.images[101].K[0, 2] == 320.0


def test_convert_with_templates_matches_hand_computed_values(omni, tmp_path):
    json_path, root = omni
    summary = omni3d.convert_omni3d([json_path], root, tmp_path / "out")
    assert summary.images == 2 and summary.objects == 4
    assert summary.skipped["annotations with valid3D false"] == 1
    assert summary.skipped["objects behind the camera"] == 1

    ds = read_dataset(tmp_path / "out", check_files=True)
    assert ds.info.name == "omni3d_sunrgbd_val"
    assert ds.info.categories == ["chair", "sofa", "table"]
    assert ds.info.camera_groups["SUNRGBD"]["fx_range"] == [500.0, 529.5]
    im1 = ds.image("SUNRGBD_val_101")
    assert [o.object_id for o in im1.objects] == [
        "SUNRGBD_val_101_1001",
        "SUNRGBD_val_101_1002",
        "SUNRGBD_val_101_1003",
    ]
    chair = im1.objects[0]
    # centre (0.5, 0.2, 4.0), f = 500, c = (320, 240): u = 320 + 500*0.5/4, v = 240 + 500*0.2/4
    np.testing.assert_allclose(chair.center_2D, [382.5, 265.0], atol=1e-6)
    # Omni3D [W, H, L] = [0.6, 0.9, 1.2] is stored as is; (L, W, H) = (1.2, 0.6, 0.9)
    np.testing.assert_allclose(chair.dimensions, [0.6, 0.9, 1.2])
    np.testing.assert_allclose(chair.dims_lwh, [1.2, 0.6, 0.9])
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    np.testing.assert_allclose(chair.R_cam, [[c, 0, s], [0, 1, 0], [-s, 0, c]], atol=1e-6)
    np.testing.assert_allclose(chair.bbox2D_tight, [368.0, 215.0, 401.0, 312.0])
    assert chair.visibility == pytest.approx(0.9)

    second = im1.objects[1]  # R = I, so corner v0 = centre + (-L, -H, -W)/2
    np.testing.assert_allclose(second.bbox3D_cam[0], [-1.25, -0.1, 2.25], atol=1e-6)

    # table: R = Ry(-90 deg) turns L (1.5) along z and W (0.8) along x, so the corners span
    # x in [-0.4, 0.4], y in [0.15, 0.85], z in [2.25, 3.75]; its tight box is -1, so the
    # clipped projected box stands in: u = 320 -+ 500*0.4/2.25, v = 240 + 500*{0.15/3.75, 0.85/2.25}
    table = im1.objects[2]
    expected = [320 - 500 * 0.4 / 2.25, 260.0, 320 + 500 * 0.4 / 2.25, 240 + 500 * 0.85 / 2.25]
    np.testing.assert_allclose(table.bbox2D_tight, expected, atol=1e-5)
    np.testing.assert_allclose(table.bbox2D_proj, expected, atol=1e-5)
    assert table.visibility == 1.0  # -1 (unknown) -> fully visible
    assert table.truncation == 0.0  # -1 (unknown) -> computed, inside the image

    sofa = ds.image("SUNRGBD_val_102").objects[0]
    # projected extent u in [629.75, 1159.25] clipped at 730: truncation 1 - 100.25/529.5
    np.testing.assert_allclose(sofa.bbox2D_proj, [629.75, 265.0, 730.0, 476.8], atol=1e-5)
    assert sofa.truncation == pytest.approx(1 - 100.25 / 529.5, abs=1e-6)
    assert sofa.visibility == pytest.approx(0.8)  # annotated: kept
    assert im1.scene == "indoor" and im1.camera_group == "SUNRGBD"

    texts = {q.target_object_id: q.text for q in ds.queries}
    assert texts == {
        "SUNRGBD_val_101_1001": "the farthest chair",
        "SUNRGBD_val_101_1002": "the nearest chair",
        "SUNRGBD_val_101_1003": "the table",
        "SUNRGBD_val_102_1006": "the sofa",
    }
    assert {q.split for q in ds.queries} == {"val"}
    assert {q.answer for q in ds.queries} == {"chair", "table", "sofa"}
    # pictures are copied byte for byte
    source = root / "SUNRGBD/kv1/scene_0001/image/0001.jpg"
    assert ds.image_path("SUNRGBD_val_101").read_bytes() == source.read_bytes()
    assert ds.image_path("SUNRGBD_val_102").suffix == ".png"


@pytest.mark.parametrize("as_json_list", [False, True])
def test_convert_with_caption_file(omni, tmp_path, as_json_list):
    json_path, root = omni
    captions = CAPTIONS
    if as_json_list:
        captions = tmp_path / "captions.json"
        lines = CAPTIONS.read_text().splitlines()
        captions.write_text(json.dumps([json.loads(line) for line in lines]))
    omni3d.convert_omni3d([json_path], root, tmp_path / "out", captions=captions)
    ds = read_dataset(tmp_path / "out")
    got = [(q.target_object_id, q.type, q.text, q.answer, q.split) for q in ds.queries]
    assert got == [
        ("SUNRGBD_val_101_1001", "question", "I want to sit far from the camera: where?", "chair",
         "val"),
        ("SUNRGBD_val_101_1003", "caption", "the wooden table between the two chairs", "table",
         "val"),
        ("SUNRGBD_val_102_1006", "caption", "the grey sofa on the right", "sofa", "test"),
    ]  # fmt: skip


def test_cli_run_and_split_override(omni, tmp_path):
    json_path, root = omni
    code = main(
        ["data", "omni3d", "--json", str(json_path), "--images-root", str(root),
         "--out", str(tmp_path / "o"), "--split", "train",
         "--min-visibility", "0.95", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    ds = read_dataset(tmp_path / "o")
    # the chair (0.9) and the sofa (0.8) are less visible than 0.95: no query; unknown passes
    assert sorted(q.text for q in ds.queries) == ["the nearest chair", "the table"]
    assert {q.split for q in ds.queries} == {"train"}


def test_rotated_source_picture_is_turned(tmp_path):
    def edit(data):
        data["images"] = data["images"][:1]
        data["images"][0]["src_90_rotate"] = 1
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 101]

    json_path = _edited(tmp_path, edit)
    root = tmp_path / "datasets"
    path = root / "SUNRGBD/kv1/scene_0001/image/0001.jpg"
    path.parent.mkdir(parents=True)
    path = path.with_suffix(".png")  # lossless, to compare pixels
    json_path.write_text(json_path.read_text().replace("0001.jpg", "0001.png"))
    source = _picture(480, 640, 3)  # stored 480 wide, 640 high: the annotation's size turned
    cv2.imwrite(str(path), source)
    omni3d.convert_omni3d([json_path], root, tmp_path / "out")
    ds = read_dataset(tmp_path / "out")
    written = cv2.imread(str(ds.image_path("edited_101")))
    assert written.shape == (480, 640, 3)
    np.testing.assert_array_equal(written, np.rot90(source, k=1))


def test_template_caption_sides_and_ambiguity():
    centers = np.array([[-1.0, 0, 3.0], [1.0, 0, 3.1], [0.0, 0, 3.05]])
    uv = np.array([[100.0, 240], [540.0, 240], [320.0, 240]])
    names = ["cup", "cup", "cup"]
    assert template_caption(names, centers, uv, 0, width=640) == "the leftmost cup"
    assert template_caption(names, centers, uv, 1, width=640) == "the rightmost cup"
    assert template_caption(names, centers, uv, 2, width=640) is None
    assert template_caption(["cup", "mug"], centers[:2], uv[:2], 1, width=640) == "the mug"


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d["annotations"][0].update(dimensions=[0.6, 0.9]),
         r"annotations\[0\]\.dimensions: expected finite numbers of shape \[3\]"),
        (lambda d: d["annotations"][1].update(dimensions=[0.6, -0.9, 1.0]),
         r"annotations\[1\]\.dimensions: expected 3 positive numbers"),
        (lambda d: d["images"][1].pop("K"), r"images\[1\]: missing key 'K'"),
        (lambda d: d["annotations"][2].update(R_cam=[[2, 0, 0], [0, 1, 0], [0, 0, 1]]),
         r"annotations\[2\]\.R_cam: expected a 3x3 rotation"),
        (lambda d: d["annotations"][0].update(image_id=999),
         r"annotations\[0\]\.image_id: expected the id of an entry in 'images'"),
        (lambda d: d["annotations"][0].update(valid3D="yes"),
         r"annotations\[0\]\.valid3D: expected true/false"),
        (lambda d: d.pop("annotations"), r"missing key 'annotations'"),
    ],
)  # fmt: skip
def test_malformed_json_names_file_and_index(tmp_path, edit, match):
    path = _edited(tmp_path, edit)
    with pytest.raises(DataFormatError, match=match) as info:
        omni3d_json.load_omni3d(path)
    assert str(path) in str(info.value)


def test_invalid_json_syntax_names_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"info": {},\n "images": [\n  {"id": 1,,}\n ]}\n')
    with pytest.raises(DataFormatError, match=r"broken\.json: line 3 column \d+: invalid JSON"):
        omni3d_json.load_omni3d(path)
    with pytest.raises(DataFormatError, match=r"nothere\.json: file not found"):
        omni3d_json.load_omni3d(tmp_path / "nothere.json")


def test_missing_picture_fails_or_is_skipped(omni, tmp_path):
    json_path, root = omni
    (root / "SUNRGBD/kv2/scene_0002/image/0002.png").unlink()
    with pytest.raises(DataFormatError, match=r"image id 102: picture .*0002\.png not found"):
        omni3d.convert_omni3d([json_path], root, tmp_path / "a")
    config = omni3d.Omni3DConvertConfig(skip_missing_images=True)
    summary = omni3d.convert_omni3d([json_path], root, tmp_path / "b", config=config)
    assert summary.images == 1 and summary.skipped["images whose file is missing"] == 1


def test_wrong_picture_size_is_reported(omni, tmp_path):
    json_path, root = omni
    cv2.imwrite(str(root / "SUNRGBD/kv2/scene_0002/image/0002.png"), _picture(100, 50, 0))
    with pytest.raises(DataFormatError, match=r"0002\.png: picture is 100x50 px but .* 730x530"):
        omni3d.convert_omni3d([json_path], root, tmp_path / "out")


def test_unknown_split_asks_for_split(omni, tmp_path):
    _, root = omni
    path = _edited(tmp_path, lambda d: d["info"].update(split="Everything"))
    with pytest.raises(DataFormatError, match=r"info\.split is 'Everything'.*--split"):
        omni3d.convert_omni3d([path], root, tmp_path / "out")
    with pytest.raises(InvalidInputError, match=r"split must be one of"):
        omni3d.Omni3DConvertConfig(split="dev")


def test_bad_caption_file_names_line(omni, tmp_path):
    json_path, root = omni
    bad = tmp_path / "captions.jsonl"
    bad.write_text(
        '{"image_id": 101, "ann_id": 1003, "text": "the table"}\n'
        '{"image_id": 101, "ann_id": 9999, "text": "the ghost"}\n'
    )
    with pytest.raises(
        DataFormatError, match=r"captions\.jsonl: line 2: image_id 101 / ann_id 9999"
    ):
        omni3d.convert_omni3d([json_path], root, tmp_path / "out", captions=bad)
    bad.write_text('{"image_id": 101, "ann_id": 1003}\n')
    with pytest.raises(DataFormatError, match=r"line 1: missing key 'text'"):
        omni3d.load_captions(bad)
    bad.write_text('{"image_id": 101, "ann_id": 1003, "text": "x", "type": "riddle"}\n')
    with pytest.raises(DataFormatError, match=r"line 1\.type: expected one of"):
        omni3d.load_captions(bad)
    bad.write_text("{not json\n")
    with pytest.raises(DataFormatError, match=r"line 1: invalid JSON"):
        omni3d.load_captions(bad)


def test_rounded_rotation_and_inconsistent_corners_are_repaired(tmp_path):
    def edit(data):
        chair = data["annotations"][0]
        chair["R_cam"] = (np.array(chair["R_cam"]) + 4e-4).tolist()  # float32-style rounding
        chair["bbox3D_cam"] = (np.array(chair["bbox3D_cam"]) + np.array([0.5, 0, 0])).tolist()

    json_path = _edited(tmp_path, edit)
    root = _images_root(tmp_path, json.loads(json_path.read_text()))
    omni3d.convert_omni3d([json_path], root, tmp_path / "out")
    chair = read_dataset(tmp_path / "out").image("edited_101").objects[0]
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    np.testing.assert_allclose(chair.R_cam, [[c, 0, s], [0, 1, 0], [-s, 0, c]], atol=2e-3)
    np.testing.assert_allclose(chair.R_cam @ chair.R_cam.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(chair.bbox3D_cam.mean(axis=0), [0.5, 0.2, 4.0], atol=1e-6)
    assert chair.extra == {"source_ann_id": 1001, "bbox3D_recomputed": True}
