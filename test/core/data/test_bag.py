"""rosbag2 (sqlite3 and mcap) -> our dataset format: bags built with rosbags' Writer."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from llmi3d_core.cli import main
from llmi3d_core.data.convert import bag as bagconv
from llmi3d_core.data.convert.bag_labels import load_labels_file
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.errors import DataFormatError, InvalidInputError
from llmi3d_core.messages import nearest_stamp, quaternion_to_matrix

WIDTH, HEIGHT = 64, 48
FX, FY, CX, CY = 60.0, 60.0, 32.0, 24.0
T0 = 1_700_000_000_000_000_000  # ns
PERIOD = 100_000_000  # 10 Hz
FRAMES = 10
FRAME_ID = "camera_color_optical_frame"
# a 90 degree turn about the camera y axis: quaternion (0, sin 45, 0, cos 45)
Q_YAW90 = (0.0, float(np.sin(np.pi / 4)), 0.0, float(np.cos(np.pi / 4)))


def _picture(index: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB drawing, different per frame."""
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:, :, 0] = 20 * index
    cv2.rectangle(image, (10 + index, 10), (30 + index, 30), (0, 200, 100), -1)
    return image


def _labels(index: int) -> list[dict]:
    """Boxes of frame `index`: a mug (moving in x) turned 90 deg, and a box at identity."""
    return [
        {"class_id": "mug", "center": [0.2 + 0.01 * index, -0.1, 2.0], "size": [0.3, 0.2, 0.1],
         "orientation": list(Q_YAW90), "id": "7"},
        {"class_id": "box", "center": [-0.3, 0.1, 3.0], "size": [0.4, 0.4, 0.2],
         "orientation": [0.0, 0.0, 0.0, 1.0]},
    ]  # fmt: skip


def _header(ts, stamp_ns: int, frame_id: str = FRAME_ID):
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def _image_msg(ts, stamp_ns: int, image: np.ndarray, kind: str):
    header = _header(ts, stamp_ns)
    if kind == "compressed":
        ok, data = cv2.imencode(".png", image[:, :, ::-1])
        assert ok
        Msg = ts.types["sensor_msgs/msg/CompressedImage"]
        return Msg(header=header, format="rgb8; png compressed bgr8", data=data.reshape(-1))
    Image = ts.types["sensor_msgs/msg/Image"]
    if kind == "mono8":
        data, step, encoding = image[:, :, 1].copy(), WIDTH, "mono8"
    elif kind == "bgr8":
        data, step, encoding = image[:, :, ::-1].copy(), 3 * WIDTH, "bgr8"
    elif kind == "rgb8_padded":  # rows padded to a multiple of 64 bytes, as some drivers do
        step = -(-3 * WIDTH // 64) * 64 + 64
        data = np.full((HEIGHT, step), 255, np.uint8)
        data[:, : 3 * WIDTH] = image.reshape(HEIGHT, -1)
        encoding = "rgb8"
    elif kind == "mono8_padded":
        step = WIDTH + 3
        data = np.zeros((HEIGHT, step), np.uint8)
        data[:, :WIDTH] = image[:, :, 1]
        encoding = "mono8"
    else:
        data, step, encoding = image.copy(), 3 * WIDTH, "rgb8"
    return Image(header=header, height=HEIGHT, width=WIDTH, encoding=encoding, is_bigendian=0,
                 step=step, data=data.reshape(-1))  # fmt: skip


def _camera_info(ts, stamp_ns: int, width: int = WIDTH, height: int = HEIGHT):
    Info = ts.types["sensor_msgs/msg/CameraInfo"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    k = np.array([FX, 0, CX, 0, FY, CY, 0, 0, 1], dtype=np.float64)
    p = np.array([FX, 0, CX, 0, 0, FY, CY, 0, 0, 0, 1, 0], dtype=np.float64)
    return Info(
        header=_header(ts, stamp_ns), height=height, width=width, distortion_model="plumb_bob",
        d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
        roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )  # fmt: skip


def _detections(ts, stamp_ns: int, boxes: list[dict], frame_id: str = FRAME_ID):
    t = ts.types
    Point, Quat = t["geometry_msgs/msg/Point"], t["geometry_msgs/msg/Quaternion"]
    Pose, Vector3 = t["geometry_msgs/msg/Pose"], t["geometry_msgs/msg/Vector3"]
    PoseCov = t["geometry_msgs/msg/PoseWithCovariance"]
    Hyp, HypPose = (
        t["vision_msgs/msg/ObjectHypothesis"],
        t["vision_msgs/msg/ObjectHypothesisWithPose"],
    )
    BBox, Det = t["vision_msgs/msg/BoundingBox3D"], t["vision_msgs/msg/Detection3D"]
    dets = []
    for box in boxes:
        pose = Pose(position=Point(*box["center"]), orientation=Quat(*box["orientation"]))
        results = [
            HypPose(hypothesis=Hyp(class_id="other", score=0.2),
                    pose=PoseCov(pose=pose, covariance=np.zeros(36))),
            HypPose(hypothesis=Hyp(class_id=box["class_id"], score=0.9),
                    pose=PoseCov(pose=pose, covariance=np.zeros(36))),
        ]  # fmt: skip
        dets.append(
            Det(header=_header(ts, stamp_ns, frame_id), results=results,
                bbox=BBox(center=pose, size=Vector3(*box["size"])), id=box.get("id", ""))
        )  # fmt: skip
    return t["vision_msgs/msg/Detection3DArray"](header=_header(ts, stamp_ns, frame_id),
                                                   detections=dets)  # fmt: skip


def make_bag(
    path: Path,
    storage: StoragePlugin,
    *,
    kind: str = "rgb8",
    with_labels_topic: bool = True,
    info_offset_ns: int = 5_000_000,
    info_size: tuple[int, int] = (WIDTH, HEIGHT),
    label_frame: str = FRAME_ID,
) -> Path:
    """A bag of FRAMES images at 10 Hz, CameraInfo 5 ms later, and Detection3DArray labels."""
    ts = bagconv.make_typestore()
    image_type = (
        "sensor_msgs/msg/CompressedImage" if kind == "compressed" else "sensor_msgs/msg/Image"
    )
    image_topic = "/camera/color/image_raw" + ("/compressed" if kind == "compressed" else "")
    with Writer(path, version=9, storage_plugin=storage) as writer:
        image_conn = writer.add_connection(image_topic, image_type, typestore=ts)
        info_conn = writer.add_connection(
            "/camera/color/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts
        )
        label_conn = None
        if with_labels_topic:
            label_conn = writer.add_connection("/labels", bagconv.DETECTIONS_TYPE, typestore=ts)
        for index in range(FRAMES):
            stamp = T0 + index * PERIOD
            msg = _image_msg(ts, stamp, _picture(index), kind)
            writer.write(image_conn, stamp + 1000, ts.serialize_cdr(msg, image_type))
            info = _camera_info(ts, stamp + info_offset_ns, *info_size)
            writer.write(
                info_conn, stamp + info_offset_ns, ts.serialize_cdr(info, info.__msgtype__)
            )
            if label_conn is not None:
                dets = _detections(ts, stamp, _labels(index), label_frame)
                writer.write(label_conn, stamp + 2000, ts.serialize_cdr(dets, dets.__msgtype__))
    return path


def _config(kind: str = "rgb8", **kwargs) -> bagconv.BagConvertConfig:
    topic = "/camera/color/image_raw" + ("/compressed" if kind == "compressed" else "")
    values = {"image_topic": topic, "camera_info_topic": "/camera/color/camera_info",
              "labels_topic": "/labels", "train_frac": 0.6, "val_frac": 0.2}  # fmt: skip
    values.update(kwargs)
    return bagconv.BagConvertConfig(**values)


@pytest.mark.parametrize(
    "storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP], ids=["sqlite3", "mcap"]
)
@pytest.mark.parametrize("kind", ["rgb8", "compressed"])
def test_bag_to_dataset_values(tmp_path, storage, kind):
    bag = make_bag(tmp_path / "kitchen_bag", storage, kind=kind)
    summary = bagconv.convert_bag(bag, tmp_path / "out", _config(kind))
    assert summary.images == FRAMES and summary.objects == 2 * FRAMES
    ds = read_dataset(tmp_path / "out", check_files=True)
    assert ds.info.name == "kitchen_bag" and ds.info.categories == ["box", "mug"]
    group = "camera_color_image_raw" + ("_compressed" if kind == "compressed" else "")
    assert ds.info.camera_groups[group] == {"width": 64, "height": 48, "fx_range": [60.0, 60.0]}

    first = ds.images[0]
    assert first.image_id == f"kitchen_bag_{T0}"
    np.testing.assert_allclose(first.K, [[FX, 0, CX], [0, FY, CY], [0, 0, 1]])
    mug, box = first.objects
    assert mug.category_name == "mug" and mug.extra == {"source_id": "7"}
    # size (x, y, z) = (L, H, W) = (0.3, 0.2, 0.1) -> dimensions [W, H, L] = [0.1, 0.2, 0.3]
    np.testing.assert_allclose(mug.dimensions, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(mug.dims_lwh, [0.3, 0.1, 0.2])
    # 90 deg about y: R = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    np.testing.assert_allclose(mug.R_cam, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-6)
    # centre (0.2, -0.1, 2.0): u = 32 + 60*0.2/2 = 38, v = 24 - 60*0.1/2 = 21
    np.testing.assert_allclose(mug.center_2D, [38.0, 21.0], atol=1e-6)
    # L (0.3) now runs along -z, W (0.1) along x: x in 0.2 +- 0.05, y in -0.1 +- 0.1,
    # z in 2 +- 0.15; u is least at x = 0.15, z = 2.15 and most at x = 0.25, z = 1.85
    u1, u2 = 32 + 60 * 0.15 / 2.15, 32 + 60 * 0.25 / 1.85
    v1, v2 = 24 - 60 * 0.2 / 1.85, 24 + 0.0
    np.testing.assert_allclose(mug.bbox2D_proj, [u1, v1, u2, v2], atol=1e-5)
    np.testing.assert_allclose(box.R_cam, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(
        box.bbox3D_cam[0], [-0.5, -0.1, 2.9], atol=1e-9
    )  # v0 = c - (L,H,W)/2

    # splits by time: 6 train, 2 val, 2 test; one caption per object
    splits = [ds.images.index(ds.image(q.image_id)) for q in ds.queries if q.split == "val"]
    assert sorted(set(splits)) == [6, 7]
    assert [q.split for q in ds.queries[::2]] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert {q.text for q in ds.queries} == {"the mug", "the box"}
    assert {(q.text, q.answer) for q in ds.queries} == {("the mug", "mug"), ("the box", "box")}

    # pictures: raw rgb8 and png-compressed are lossless
    written = cv2.imread(str(ds.image_path(ds.images[3].image_id)))[:, :, ::-1]
    np.testing.assert_array_equal(written, _picture(3))


@pytest.mark.parametrize("kind", ["bgr8", "mono8", "rgb8_padded", "mono8_padded"])
def test_raw_encodings_are_converted_to_rgb(tmp_path, kind):
    """Colour conversion, and rows padded beyond width * channels (step) are cut, not sheared."""
    bag = make_bag(tmp_path / "bag", StoragePlugin.SQLITE3, kind=kind)
    bagconv.convert_bag(bag, tmp_path / "out", _config(kind))
    ds = read_dataset(tmp_path / "out")
    written = cv2.imread(str(ds.image_path(ds.images[2].image_id)))[:, :, ::-1]
    if kind.startswith("mono8"):
        expected = np.repeat(_picture(2)[:, :, 1:2], 3, axis=2)
    else:
        expected = _picture(2)
    np.testing.assert_array_equal(written, expected)


def test_labels_file_and_cli(tmp_path):
    bag = make_bag(tmp_path / "bag", StoragePlugin.MCAP, with_labels_topic=False)
    labels = tmp_path / "labels.jsonl"
    lines = []
    for index in (1, 4):  # only two frames labelled; stamps 3 ms off the image's
        entry = {"stamp_ns": T0 + index * PERIOD + 3_000_000, "frame_id": FRAME_ID,
                 "objects": _labels(index)[:1]}  # fmt: skip
        lines.append(json.dumps(entry))
    kettle = {"class_id": "Kettle", "center": [0, 0, 1.5], "size": [0.2, 0.3, 0.2]}
    stamp = T0 + 7 * PERIOD
    entry = {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9}, "objects": [kettle]}
    lines.append(json.dumps(entry))
    labels.write_text("\n".join(lines) + "\n")
    code = main(
        ["data", "from-bag", str(bag), "--image-topic", "/camera/color/image_raw",
         "--camera-info-topic", "/camera/color/camera_info", "--labels", str(labels),
         "--out", str(tmp_path / "o"),
         "--train-frac", "0.34", "--val-frac", "0.33", "--name", "mine", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    ds = read_dataset(tmp_path / "o")
    assert ds.info.name == "mine"
    assert [im.extra["stamp_ns"] for im in ds.images] == [T0 + i * PERIOD for i in (1, 4, 7)]
    assert [(q.text, q.split) for q in ds.queries] == [
        ("the mug", "train"), ("the mug", "val"), ("the kettle", "test")
    ]  # fmt: skip
    kettle = ds.images[2].objects[0]
    np.testing.assert_allclose(kettle.R_cam, np.eye(3))  # orientation defaults to identity
    np.testing.assert_allclose(kettle.center_2D, [CX, CY])


def test_camera_info_of_another_size_scales_k(tmp_path):
    bag = make_bag(tmp_path / "bag", StoragePlugin.SQLITE3, info_size=(128, 96))
    summary = bagconv.convert_bag(bag, tmp_path / "out", _config())
    assert summary.notes == {"images whose size differs from CameraInfo (K scaled)": FRAMES}
    ds = read_dataset(tmp_path / "out")
    np.testing.assert_allclose(
        ds.images[0].K, [[FX / 2, 0, CX / 2], [0, FY / 2, CY / 2], [0, 0, 1]]
    )


def test_slop_too_small_for_camera_info(tmp_path):
    bag = make_bag(tmp_path / "bag", StoragePlugin.SQLITE3, info_offset_ns=40_000_000)
    summary = bagconv.convert_bag(bag, tmp_path / "a", _config(slop_s=0.05))
    assert summary.images == FRAMES
    with pytest.raises(DataFormatError, match=r"no image of '/camera/color/image_raw' has both"):
        bagconv.convert_bag(bag, tmp_path / "b", _config(slop_s=0.01))


def test_split_by_time_and_nearest():
    assert bagconv.split_by_time(10, 0.8, 0.1) == ["train"] * 8 + ["val"] + ["test"]
    assert bagconv.split_by_time(3, 1.0, 0.0) == ["train"] * 3
    assert nearest_stamp([10, 20, 30], 24, 5) == 1
    assert nearest_stamp([10, 20, 30], 26, 5) == 2
    assert nearest_stamp([10, 20, 30], 45, 5) is None
    assert nearest_stamp([], 45, 5) is None


# ------------------------------------------------------------------------------------- errors


def test_missing_topic_lists_the_bag_topics(tmp_path):
    bag = make_bag(tmp_path / "bag", StoragePlugin.MCAP)
    config = _config(image_topic="/camera/image")
    with pytest.raises(
        DataFormatError,
        match=r"no topic '/camera/image'; the bag has: /camera/color/camera_info "
        r"\(sensor_msgs/msg/CameraInfo, 10 msgs\), /camera/color/image_raw "
        r"\(sensor_msgs/msg/Image, 10 msgs\), /labels \(vision_msgs/msg/Detection3DArray",
    ):
        bagconv.convert_bag(bag, tmp_path / "out", config)
    config = _config(camera_info_topic="/labels")
    with pytest.raises(
        DataFormatError,
        match=r"topic '/labels' carries vision_msgs/msg/Detection3DArray; "
        r"expected sensor_msgs/msg/CameraInfo",
    ):
        bagconv.convert_bag(bag, tmp_path / "out", config)


def test_not_a_bag(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"empty: cannot open as a rosbag2"):
        bagconv.convert_bag(tmp_path / "empty", tmp_path / "out", _config())


def test_labels_in_another_frame_are_refused(tmp_path):
    bag = make_bag(tmp_path / "bag", StoragePlugin.SQLITE3, label_frame="base_link")
    with pytest.raises(DataFormatError, match=r"labels are in frame 'base_link' but the images in "
                       r"'camera_color_optical_frame'.*--assume-same-frame"):  # fmt: skip
        bagconv.convert_bag(bag, tmp_path / "a", _config())
    summary = bagconv.convert_bag(bag, tmp_path / "b", _config(assume_same_frame=True))
    assert summary.images == FRAMES


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"stamp_ns": 5, "objects": [{"class_id": "mug", "center": [0, 0, 1]}]}',
         r"labels\.jsonl: line 1\.objects\[0\]: missing key 'size'"),
        ('{"objects": []}', r"line 1: missing key 'stamp_ns'"),
        ('{"stamp_ns": 5, "objects": [{"class_id": "mug", "center": [0, 0], "size": [1, 1, 1]}]}',
         r"line 1\.objects\[0\]\.center: expected finite numbers of shape \[3\]"),
        ('{"stamp_ns": 5, "objects": [{"class_id": "m", "center": [0, 0, 1], "size": [1, 0, 1]}]}',
         r"line 1\.objects\[0\]\.size: expected 3 positive extents"),
        ('{"stamp_ns": 5, "objects": [{"class_id": "m", "center": [0, 0, 1], "size": [1, 1, 1], '
         '"orientation": [0, 0, 0, 0]}]}', r"orientation: expected a non-zero quaternion"),
        ("{broken", r"line 1: invalid JSON"),
    ],
)  # fmt: skip
def test_malformed_labels_file_names_line(tmp_path, text, match):
    path = tmp_path / "labels.jsonl"
    path.write_text(text + "\n")
    with pytest.raises(DataFormatError, match=match):
        load_labels_file(path)


def test_config_errors():
    with pytest.raises(InvalidInputError, match=r"exactly one label source"):
        bagconv.BagConvertConfig(image_topic="/i", camera_info_topic="/c")
    with pytest.raises(InvalidInputError, match=r"sum <= 1"):
        _config(train_frac=0.8, val_frac=0.5)
    with pytest.raises(InvalidInputError, match=r"quaternion"):
        quaternion_to_matrix(np.zeros(4))


def test_cli_reports_missing_topic(tmp_path, capsys):
    bag = make_bag(tmp_path / "bag", StoragePlugin.SQLITE3)
    code = main(
        ["data", "from-bag", str(bag), "--image-topic", "/nope", "--camera-info-topic",
         "/camera/color/camera_info", "--labels-topic", "/labels", "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "no topic '/nope'; the bag has: /camera/color/camera_info" in err
