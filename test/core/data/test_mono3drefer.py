"""Mono3DRefer JSON + KITTI calib/labels -> our dataset format, against hand-computed values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from llmi3d_core.cli import main
from llmi3d_core.data.convert import kitti, mono3drefer
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.errors import DataFormatError

FIXTURE = Path(__file__).parent / "fixtures" / "mono3drefer"
SIZES = {"000001": (1242, 375), "000002": (1242, 375), "000003": (1224, 370)}
# camera 2's offset K^-1 P2[:, 3] for calib/000001.txt, by hand:
# tz = 2.745884e-03, tx = (44.85728 - 609.5593 tz) / 721.5377,
# ty = (0.2163791 - 172.854 tz) / 721.5377
OFFSET_1 = np.array([0.0598492648, -0.0003579272, 0.002745884])


def _ry(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


@pytest.fixture
def kitti_root(tmp_path: Path) -> Path:
    """The fixture folder copied to tmp_path, with drawn pictures in images/."""
    root = tmp_path / "Mono3DRefer"
    shutil.copytree(FIXTURE, root)
    (root / "images").mkdir()
    for index, (name, (width, height)) in enumerate(SIZES.items()):
        image = np.full((height, width, 3), 40 * index, dtype=np.uint8)
        cv2.line(image, (0, height - 1), (width // 2, height // 2), (255, 255, 255), 3)
        assert cv2.imwrite(str(root / "images" / f"{name}.png"), image)
    return root


def test_parse_label_calib_and_json():
    labels = kitti.load_kitti_labels(FIXTURE / "label_2" / "000001.txt")
    assert [lab.type for lab in labels] == ["Car", "Car", "Pedestrian", "DontCare", "Car"]
    car = labels[0]
    assert (car.h, car.w, car.l, car.ry) == (1.65, 1.67, 3.64, -1.59)
    np.testing.assert_allclose(car.location, [-0.65, 1.71, 46.70])
    P2 = kitti.load_kitti_calib(FIXTURE / "calib" / "000001.txt")
    assert P2.shape == (3, 4) and P2[0, 3] == pytest.approx(44.85728)
    entries = mono3drefer.load_mono3drefer(FIXTURE / "Mono3DRefer.json")
    assert [e.object_name for e in entries] == ["car", "pedestrian", "cyclist", "van"]
    assert entries[0].label.same_box(car)  # list-literal label_2
    assert entries[2].label.type == "Cyclist"  # plain-line label_2


def test_kitti_to_camera_hand_computed():
    P2 = kitti.load_kitti_calib(FIXTURE / "calib" / "000001.txt")
    car = kitti.load_kitti_labels(FIXTURE / "label_2" / "000001.txt")[0]
    center, dims, R = kitti.kitti_to_camera(car, P2)
    # bottom centre (-0.65, 1.71, 46.70), h = 1.65: box centre y = 1.71 - 0.825, then camera 2
    np.testing.assert_allclose(center, np.add([-0.65, 0.885, 46.70], OFFSET_1), atol=1e-8)
    np.testing.assert_allclose(dims, [1.67, 1.65, 3.64])  # [W, H, L] = [w, h, l]
    np.testing.assert_allclose(R, _ry(-1.59), atol=1e-12)
    # projecting our centre with K equals projecting KITTI's rect-frame centre with P2
    rect = np.array([-0.65, 0.885, 46.70, 1.0])
    uvw = P2 @ rect
    uv = (P2[:, :3] @ center)[:2] / (P2[:, :3] @ center)[2]
    np.testing.assert_allclose(uv, uvw[:2] / uvw[2], atol=1e-9)


def test_convert_matches_kitti_devkit_corners(kitti_root, tmp_path):
    summary = mono3drefer.convert_mono3drefer(
        kitti_root / "Mono3DRefer.json", kitti_root, tmp_path / "out"
    )
    assert summary.images == 3 and summary.queries == {"train": 2, "val": 1, "test": 1}
    ds = read_dataset(tmp_path / "out", check_files=True)
    assert ds.info.categories == ["car", "cyclist", "pedestrian", "van"]
    im1 = ds.image("000001")
    assert (im1.width, im1.height) == (1242, 375)
    # DontCare (line 4) is left out
    assert [o.object_id for o in im1.objects] == [
        "000001_00",
        "000001_01",
        "000001_02",
        "000001_04",
    ]
    car = im1.objects[0]
    np.testing.assert_allclose(car.center_cam, np.add([-0.65, 0.885, 46.70], OFFSET_1), atol=1e-6)
    np.testing.assert_allclose(car.dims_lwh, [3.64, 1.67, 1.65])
    np.testing.assert_allclose(car.R_cam, _ry(-1.59), atol=1e-6)
    np.testing.assert_allclose(car.bbox2D_tight, [587.01, 173.33, 614.12, 200.12])
    # the KITTI devkit's corners: x = +-l/2, y in {0, -h}, z = +-w/2 about the bottom centre
    half_l, h, half_w = 3.64 / 2, 1.65, 1.67 / 2
    local = np.array(
        [[half_l, half_l, -half_l, -half_l, half_l, half_l, -half_l, -half_l],
         [0, 0, 0, 0, -h, -h, -h, -h],
         [half_w, -half_w, -half_w, half_w, half_w, -half_w, -half_w, half_w]]
    )  # fmt: skip
    devkit = (_ry(-1.59) @ local).T + np.add([-0.65, 1.71, 46.70], OFFSET_1)
    gaps = np.linalg.norm(car.bbox3D_cam[:, None, :] - devkit[None, :, :], axis=-1)  # (8, 8)
    assert gaps.min(axis=0).max() < 1e-5 and gaps.min(axis=1).max() < 1e-5  # same 8 points
    # the K-projection of the box centre equals P2 applied to the rect-frame centre
    u = (721.5377 * -0.65 + 609.5593 * 46.70 + 44.85728) / (46.70 + 2.745884e-03)
    v = (721.5377 * 0.885 + 172.854 * 46.70 + 0.2163791) / (46.70 + 2.745884e-03)
    np.testing.assert_allclose(car.center_2D, [u, v], atol=1e-4)
    assert car.visibility == 1.0 and car.truncation == 0.0

    pedestrian = im1.objects[2]
    assert pedestrian.category_name == "pedestrian"
    assert pedestrian.visibility == pytest.approx(0.6)  # occluded level 1, inside the image
    cut = im1.objects[3]  # bottom centre x = -5.2 at z = 6.57: leaves the image on the left
    assert cut.bbox2D_proj[0] == 0.0 and 0.0 < cut.truncation < 1.0
    assert cut.visibility == pytest.approx(0.6 * (1 - cut.truncation), abs=2e-6)

    van = ds.image("000003").objects  # no label_2 file: the JSON's target only
    assert [o.object_id for o in van] == ["000003_00"] and van[0].category_name == "van"
    assert ds.image("000003").K[0, 0] == pytest.approx(718.856)

    got = [(q.image_id, q.split, q.answer, q.target_object_id) for q in ds.queries]
    assert got == [
        ("000001", "train", "car", "000001_00"),
        ("000001", "train", "pedestrian", "000001_02"),
        ("000002", "val", "cyclist", "000002_00"),
        ("000003", "test", "van", "000003_00"),
    ]
    assert ds.queries[2].text == "The cyclist riding on the right side, about 15 meters away."
    assert ds.queries[1].extra == {"instance_id": 2, "ann_id": 0}
    assert ds.info.camera_groups["kitti"]["fx_range"] == [707.0493, 721.5377]


def test_cli_with_single_split_and_kitti_layout(kitti_root, tmp_path):
    (kitti_root / "images").rename(kitti_root / "image_2")  # KITTI's own layout
    for split in ("train", "val", "test"):
        (kitti_root / f"Mono3DRefer_{split}_image.txt").unlink()
    code = main(
        ["data", "mono3drefer", "--json", str(kitti_root / "Mono3DRefer.json"),
         "--kitti-root", str(kitti_root), "--out", str(tmp_path / "o"),
         "--split", "test", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    ds = read_dataset(tmp_path / "o")
    assert len(ds.queries) == 4 and {q.split for q in ds.queries} == {"test"}


# ------------------------------------------------------------------------------------- errors


def test_malformed_label_line_names_file_and_line(kitti_root, tmp_path):
    path = kitti_root / "label_2" / "000002.txt"
    path.write_text(path.read_text() + "Car 0.00 0 -1.70 540.00 175.00 600.00 215.00 1.52 1.65\n")
    with pytest.raises(DataFormatError, match=r"000002\.txt: line 3: expected a KITTI label of 15"):
        mono3drefer.convert_mono3drefer(kitti_root / "Mono3DRefer.json", kitti_root, tmp_path / "o")
    path.write_text("Car 0.00 0 x 1 2 3 4 1.5 1.6 3.9 1 2 3 0.1\n")
    with pytest.raises(DataFormatError, match=r"line 1: KITTI label fields 2-15 must be numbers"):
        kitti.load_kitti_labels(path)


def test_calib_without_p2(kitti_root):
    path = kitti_root / "calib" / "000001.txt"
    path.write_text("P0: 1 0 0 0 0 1 0 0 0 0 1 0\nP1: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(
        DataFormatError, match=r"000001\.txt: no 'P2:' line \(keys present: P0, P1\)"
    ):
        kitti.load_kitti_calib(path)
    path.write_text("P2: 721 0 609 44 0 721 172\n")
    with pytest.raises(DataFormatError, match=r"line 1: P2 must be 12 numbers"):
        kitti.load_kitti_calib(path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d[1].pop("description"),
         r"Mono3DRefer\.json: \[1\]: missing key 'description'"),
        (lambda d: d[0].update(label_2="['Car', '0.0'"),
         r"\[0\]\.label_2: expected the text of a list of KITTI label tokens"),
        (lambda d: d[2].update(label_2="Cyclist 0 0 1 2"),
         r"\[2\]\.label_2: expected a KITTI label"),
        (lambda d: d[3].update(instanceID="zero"), r"\[3\]\.instanceID: expected an integer"),
        (lambda d: d.__setitem__(0, "oops"), r"\[0\]: expected a JSON object"),
    ],
)  # fmt: skip
def test_malformed_json_names_index(kitti_root, edit, match):
    path = kitti_root / "Mono3DRefer.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=match):
        mono3drefer.load_mono3drefer(path)


def test_missing_picture_and_split_files(kitti_root, tmp_path):
    (kitti_root / "images" / "000002.png").unlink()
    json_path = kitti_root / "Mono3DRefer.json"
    with pytest.raises(DataFormatError, match=r"\[2\]: picture of image '000002' not found"):
        mono3drefer.convert_mono3drefer(json_path, kitti_root, tmp_path / "a")
    config = mono3drefer.Mono3DReferConvertConfig(skip_missing_images=True)
    summary = mono3drefer.convert_mono3drefer(json_path, kitti_root, tmp_path / "b", config=config)
    assert summary.images == 2 and summary.skipped["images whose picture is missing"] == 1
    config = mono3drefer.Mono3DReferConvertConfig(split_dir=str(tmp_path))
    with pytest.raises(DataFormatError, match=r"no Mono3DRefer_\{train,val,test\}_image\.txt"):
        mono3drefer.convert_mono3drefer(json_path, kitti_root, tmp_path / "c", config=config)
