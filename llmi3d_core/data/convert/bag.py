r"""Turn a rosbag2 recording (sqlite3 or mcap) with 3D box labels into our dataset format.

    llmi3d data from-bag runs/kitchen_bag --image-topic /camera/color/image_raw \
        --camera-info-topic /camera/color/camera_info --labels-topic /labels --out data/kitchen
    llmi3d data from-bag runs/kitchen_bag --image-topic /camera/color/image_raw/compressed \
        --camera-info-topic /camera/color/camera_info --labels labels.jsonl --out data/kitchen

rosbags (https://gitlab.com/ternaris/rosbags) reads the bag without ROS. What is read:

- images: sensor_msgs/Image (any encoding rosbags-image converts to rgb8) or
  sensor_msgs/CompressedImage (decoded with cv2.imdecode); stamp = header.stamp (the bag's
  receive time where the header stamp is zero);
- intrinsics: sensor_msgs/CameraInfo K (row-major 3x3), the one nearest in stamp to each image
  within --slop-s; K is scaled when the image size differs from the CameraInfo's (the image is
  assumed rectified or undistorted: D is not applied);
- labels: vision_msgs/Detection3DArray (vision_msgs 4.x; its types are registered with rosbags
  for bags that carry no type definitions) on --labels-topic, paired with the image nearest in
  stamp within --slop-s; or a labels file (--labels): JSON Lines, one labelled image a line
  (or a JSON list of the same objects), paired with images the same way:

    {"stamp_ns": 1700000000100000000, "frame_id": "camera_color_optical_frame",
     "objects": [{"class_id": "mug", "center": [0.2, -0.1, 2.0], "size": [0.3, 0.2, 0.1],
                  "orientation": [0.0, 0.7071068, 0.0, 0.7071068], "id": "3"}]}

  ("stamp": {"sec", "nanosec"} may replace "stamp_ns"; "frame_id", "orientation" (x, y, z, w;
  default identity) and "id" are optional; center, size and orientation mean what they mean in
  vision_msgs/BoundingBox3D, below).

Box mapping, consistent with the dataset format's Omni3D convention (object frame: x along L,
y along H (down), z along W):

- bbox.center.position = center_cam (metres, camera optical frame);
- bbox.center.orientation (quaternion x, y, z, w) = R_cam (object -> camera);
- bbox.size = (x, y, z) extents in the object's frame = (L, H, W), so
  dimensions [W, H, L] = [size.z, size.y, size.x];
- class_id of the best-scoring hypothesis = category_name (the object phrase).

The labels must be expressed in the image's optical frame: a Detection3DArray whose frame_id
differs from the image's is refused unless --assume-same-frame is given (no TF is applied).

Queries: one template caption per object ("the mug"; "the nearest mug" etc. when the class
repeats, see `common.template_caption`), answer = class_id. Splits by time: the labelled
frames, in stamp order, are cut into consecutive train / val / test blocks (--train-frac,
--val-frac), so near-identical neighbouring frames rarely straddle two splits.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from tqdm import tqdm

from llmi3d_core.data.convert.bag_labels import LabelFrame, labels_from_message, load_labels_file
from llmi3d_core.data.convert.common import (
    ConversionOutput,
    ConversionSummary,
    TemplateConfig,
    add_output_flags,
    project_box,
    template_captions,
)
from llmi3d_core.data.format import DatasetInfo, ImageRecord, ObjectRecord, QueryRecord
from llmi3d_core.data.writer import DatasetWriter, image_file_name
from llmi3d_core.errors import DataFormatError, InvalidInputError
from llmi3d_core.messages import (
    bbox_size_to_dims_lwh,
    camera_info_k,
    compressed_image_to_rgb,
    image_to_rgb,
    nearest_stamp,
    quaternion_to_matrix,
    scale_intrinsics,
    stamp_to_ns,
)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DETECTIONS_TYPE = "vision_msgs/msg/Detection3DArray"

# vision_msgs 4.x message definitions (the wire layout; see msg/vision_msgs in this repository).
VISION_MSGS = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"
    ),
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n",
    "vision_msgs/msg/Detection3D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
        "vision_msgs/BoundingBox3D bbox\nstring id\n"
    ),
    "vision_msgs/msg/Detection3DArray": (
        "std_msgs/Header header\nvision_msgs/Detection3D[] detections\n"
    ),
}


def make_typestore() -> Any:
    """A rosbags typestore of ROS 2 Kilted with the vision_msgs 4.x types registered.

    Used to read bags that carry no message definitions, and to write test bags.
    """
    typestore = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


# ---------------------------------------------------------------------------------------------
# Plain records of what the bag (or labels file) holds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraInfoFrame:
    """Intrinsics from one CameraInfo message.

    Attributes:
        stamp_ns: header stamp, ns.
        width: image width the calibration is for, px (0 = unknown).
        height: image height, px (0 = unknown).
        K: (3, 3) intrinsics.
    """

    stamp_ns: int
    width: int
    height: int
    K: np.ndarray


# ---------------------------------------------------------------------------------------------
# Reading the bag
# ---------------------------------------------------------------------------------------------


def _open_reader(bag: Path) -> Any:
    try:
        reader = AnyReader([bag], default_typestore=make_typestore())
        reader.open()
    except (AnyReaderError, FileNotFoundError) as err:
        raise DataFormatError(f"{bag}: cannot open as a rosbag2 (sqlite3 or mcap): {err}") from None
    return reader


def _topic_connections(reader: Any, bag: Path, topic: str, allowed: Sequence[str]) -> list[Any]:
    """The reader's connections of `topic`, checking that it exists and has an allowed type.

    Raises:
        DataFormatError: listing the bag's topics (with types and counts) when it is missing.
    """
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        listing = ", ".join(
            f"{name} ({info.msgtype}, {info.msgcount} msgs)"
            for name, info in sorted(reader.topics.items())
        )
        raise DataFormatError(f"{bag}: no topic {topic!r}; the bag has: {listing or 'no topics'}")
    wrong = sorted({c.msgtype for c in connections if c.msgtype not in allowed})
    if wrong:
        raise DataFormatError(
            f"{bag}: topic {topic!r} carries {', '.join(wrong)}; expected {' or '.join(allowed)}"
        )
    return connections


def _header_stamp(msg: Any, log_time_ns: int) -> int:
    stamp = stamp_to_ns(msg.header.stamp)
    return stamp if stamp != 0 else int(log_time_ns)


def decode_image_message(msg: Any, msgtype: str, where: str) -> np.ndarray:
    """sensor_msgs Image or CompressedImage -> (H, W, 3) uint8 RGB (llmi3d_core.messages).

    Raises:
        DataFormatError: naming `where` when the encoding or the data is unusable.
    """
    try:
        if msgtype == "sensor_msgs/msg/CompressedImage":
            return compressed_image_to_rgb(msg)
        return image_to_rgb(msg)
    except InvalidInputError as err:
        raise DataFormatError(f"{where}: {err}") from None


@dataclass(frozen=True)
class BagConvertConfig:
    """Options of `convert_bag` (the CLI flags map one to one).

    Attributes:
        image_topic: sensor_msgs/Image or CompressedImage topic.
        camera_info_topic: sensor_msgs/CameraInfo topic.
        labels_topic: vision_msgs/Detection3DArray topic ("" when labels come from a file).
        labels_file: labels file ("" when labels come from the topic).
        slop_s: largest stamp difference paired (image-CameraInfo and image-labels), seconds.
        train_frac: fraction of the labelled frames (earliest first) in train.
        val_frac: fraction of the labelled frames that follow, in val; the rest is test.
        name: dataset name; "" means the bag folder's name.
        scene: scene label of every image.
        camera_group: camera group name; "" derives it from the image topic.
        assume_same_frame: accept labels whose frame_id differs from the image's.
        templates: TemplateConfig of the captions.
    """

    image_topic: str
    camera_info_topic: str
    labels_topic: str = ""
    labels_file: str = ""
    slop_s: float = 0.05
    train_frac: float = 0.8
    val_frac: float = 0.1
    name: str = ""
    scene: str = "bag"
    camera_group: str = ""
    assume_same_frame: bool = False
    templates: TemplateConfig = field(default_factory=TemplateConfig)

    def __post_init__(self) -> None:
        if bool(self.labels_topic) == bool(self.labels_file):
            raise InvalidInputError(
                "give exactly one label source: a labels topic (--labels-topic) or a labels file "
                f"(--labels); got topic={self.labels_topic!r}, file={self.labels_file!r}"
            )
        if not 0.0 <= self.slop_s <= 10.0:
            raise InvalidInputError(f"slop_s must be in [0, 10] s, got {self.slop_s}")
        fracs = (self.train_frac, self.val_frac)
        if min(fracs) < 0.0 or sum(fracs) > 1.0 + 1e-9:
            raise InvalidInputError(
                f"train_frac and val_frac must be >= 0 with a sum <= 1 (the rest is test), got "
                f"{self.train_frac} and {self.val_frac}"
            )


def split_by_time(count: int, train_frac: float, val_frac: float) -> list[str]:
    """Split labels for `count` frames in time order: consecutive train, val and test blocks."""
    n_train = round(count * train_frac)
    n_val = min(round(count * val_frac), count - n_train)
    return ["train"] * n_train + ["val"] * n_val + ["test"] * (count - n_train - n_val)


@dataclass
class _Frame:
    """A labelled image chosen for the dataset (filled during the scan of the bag)."""

    stamp_ns: int
    labels: LabelFrame
    info: CameraInfoFrame | None = None
    split: str = ""


@dataclass
class _Scan:
    """What the first pass over the bag found."""

    infos: list[CameraInfoFrame] = field(default_factory=list)
    labels: list[LabelFrame] = field(default_factory=list)
    image_stamps: list[int] = field(default_factory=list)
    image_frames: dict[int, str] = field(default_factory=dict)  # stamp -> frame_id


def _scan(reader: Any, bag: Path, config: BagConvertConfig) -> _Scan:
    """Read CameraInfo, labels and image stamps (images are decoded later, only if used)."""
    scan = _Scan()
    image_conns = _topic_connections(reader, bag, config.image_topic, IMAGE_TYPES)
    info_conns = _topic_connections(reader, bag, config.camera_info_topic, (CAMERA_INFO_TYPE,))
    label_conns = []
    if config.labels_topic:
        label_conns = _topic_connections(reader, bag, config.labels_topic, (DETECTIONS_TYPE,))
    wanted = image_conns + info_conns + label_conns
    for connection, log_time, raw in reader.messages(connections=wanted):
        msg = reader.deserialize(raw, connection.msgtype)
        stamp = _header_stamp(msg, log_time)
        where = f"{bag}: {connection.topic} @ {stamp} ns"
        if connection.msgtype == CAMERA_INFO_TYPE:
            try:
                K = camera_info_k(msg, require_size=False)
            except InvalidInputError as err:
                raise DataFormatError(f"{where}: {err}") from None
            scan.infos.append(CameraInfoFrame(stamp, int(msg.width), int(msg.height), K))
        elif connection.msgtype == DETECTIONS_TYPE:
            scan.labels.append(labels_from_message(msg, stamp, where))
        else:
            scan.image_stamps.append(stamp)
            scan.image_frames[stamp] = str(msg.header.frame_id)
    if config.labels_file:
        scan.labels = load_labels_file(config.labels_file)
    scan.infos.sort(key=lambda i: i.stamp_ns)
    return scan


def _select_frames(
    scan: _Scan, bag: Path, config: BagConvertConfig, summary: ConversionSummary
) -> dict[int, _Frame]:
    """Pair labels with images and CameraInfo by stamp; assign splits by time."""
    slop_ns = round(config.slop_s * 1e9)
    image_stamps = sorted(set(scan.image_stamps))
    info_stamps = [i.stamp_ns for i in scan.infos]
    frames: dict[int, _Frame] = {}
    for labels in scan.labels:
        index = nearest_stamp(image_stamps, labels.stamp_ns, slop_ns)
        if index is None:
            summary.skip("label sets with no image within slop")
            continue
        stamp = image_stamps[index]
        if stamp in frames:
            summary.skip("label sets for an already labelled image")
            continue
        image_frame = scan.image_frames.get(stamp, "")
        other_frame = labels.frame_id and image_frame and labels.frame_id != image_frame
        if other_frame and not config.assume_same_frame:
            raise DataFormatError(
                f"{labels.where}: labels are in frame {labels.frame_id!r} but the images in "
                f"{image_frame!r}; boxes must be in the image's optical frame (no TF is "
                "applied). Pass --assume-same-frame if they are."
            )
        info_index = nearest_stamp(info_stamps, stamp, slop_ns)
        if info_index is None:
            summary.skip("labelled images with no CameraInfo within slop")
            continue
        frames[stamp] = _Frame(stamp_ns=stamp, labels=labels, info=scan.infos[info_index])
    summary.skip("unlabelled images", len(image_stamps) - len(frames))
    if not frames:
        raise DataFormatError(
            f"{bag}: no image of {config.image_topic!r} has both labels and a CameraInfo of "
            f"{config.camera_info_topic!r} within slop_s={config.slop_s} s ({len(image_stamps)} "
            f"images, {len(scan.labels)} label sets, {len(scan.infos)} CameraInfo messages)"
        )
    ordered = sorted(frames)
    for stamp, split in zip(
        ordered, split_by_time(len(ordered), config.train_frac, config.val_frac), strict=True
    ):
        frames[stamp].split = split
    return frames


def _objects(
    frame: _Frame,
    K: np.ndarray,
    *,
    width: int,
    height: int,
    image_id: str,
    summary: ConversionSummary,
) -> list[ObjectRecord]:
    """Our ObjectRecords of a frame's label boxes (boxes not in view are counted and left out).

    Raises:
        DataFormatError: for a box with a non-positive size or a zero quaternion.
    """
    objects = []
    for number, box in enumerate(frame.labels.boxes):
        L, W, H = (float(v) for v in bbox_size_to_dims_lwh(box.size))
        if min(L, H, W) <= 0:
            raise DataFormatError(
                f"{frame.labels.where}: box {number} ({box.class_id!r}) has size {box.size}; "
                "extents (L, H, W) must be > 0 m"
            )
        try:
            R = quaternion_to_matrix(box.orientation)
        except InvalidInputError as err:
            raise DataFormatError(f"{frame.labels.where}: box {number}: {err}") from None
        dims = np.array([W, H, L])
        projected = project_box(box.center, dims, R, K, width=width, height=height)
        if projected is None:
            summary.skip("objects behind the camera or out of view")
            continue
        objects.append(
            ObjectRecord(
                object_id=f"{image_id}_{number:02d}",
                category_name=box.class_id.lower(),
                attributes={},
                center_cam=box.center,
                dimensions=dims,
                R_cam=R,
                bbox2D_tight=projected.bbox2D_clipped,
                bbox2D_proj=projected.bbox2D_clipped,
                bbox3D_cam=projected.corners,
                center_2D=projected.center_2D,
                visibility=1.0 - projected.truncation,
                truncation=projected.truncation,
                extra={"source_id": box.id} if box.id else {},
            )
        )
    return objects


def convert_bag(
    bag: str | Path,
    out_dir: str | Path,
    config: BagConvertConfig,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Convert the labelled frames of a rosbag2 into one dataset directory.

    Two passes over the bag: the first reads CameraInfo, labels and image stamps, the second
    decodes and writes only the images kept (so memory does not grow with the bag).

    Args:
        bag: the rosbag2 folder (metadata.yaml + .db3 or .mcap).
        out_dir: the dataset directory to write.
        config: topics, label source, slop and split fractions.
        overwrite: allow replacing a dataset already in out_dir.
        progress: show a tqdm progress bar.

    Returns:
        What was written and left out.

    Raises:
        DataFormatError: an unreadable bag, a missing topic (the message lists the bag's
            topics), a topic of the wrong type, malformed labels, labels in another frame, or
            no image with both labels and a CameraInfo.
        InvalidInputError: when out_dir already holds a dataset and overwrite is False.
    """
    bag = Path(bag)
    summary = ConversionSummary(out_dir=Path(out_dir))
    reader = _open_reader(bag)
    try:
        frames = _select_frames(_scan(reader, bag, config), bag, config, summary)
        info = DatasetInfo(
            name=config.name or bag.resolve().name,
            seed=None,
            generator={
                "program": "llmi3d data from-bag",
                "bag": str(bag),
                "image_topic": config.image_topic,
                "camera_info_topic": config.camera_info_topic,
                "labels": config.labels_topic or config.labels_file,
                "slop_s": config.slop_s,
                "train_frac": config.train_frac,
                "val_frac": config.val_frac,
            },
        )
        image_conns = [c for c in reader.connections if c.topic == config.image_topic]
        with DatasetWriter(out_dir, info, overwrite=overwrite) as writer:
            output = ConversionOutput(writer, summary)
            job = _BagJob(bag, config, output)
            messages = reader.messages(connections=image_conns)
            total = sum(c.msgcount for c in image_conns)
            for connection, log_time, raw in tqdm(
                messages, total=total, desc="from-bag", disable=not progress, unit="msg"
            ):
                msg = reader.deserialize(raw, connection.msgtype)
                frame = frames.pop(_header_stamp(msg, log_time), None)
                if frame is not None:
                    job.write_frame(msg, connection.msgtype, frame)
            writer.info.camera_groups = output.camera_groups
    finally:
        reader.close()
    return summary


@dataclass
class _BagJob:
    """State of one `convert_bag` run's second pass."""

    bag: Path
    config: BagConvertConfig
    output: ConversionOutput

    @property
    def summary(self) -> ConversionSummary:
        """The run's summary (the output's)."""
        return self.output.summary

    @property
    def group(self) -> str:
        """Camera group: configured, or the image topic with "/" -> "_"."""
        topic = self.config.image_topic.strip("/").replace("/", "_")
        return self.config.camera_group or topic or "camera"

    def write_frame(self, msg: Any, msgtype: str, frame: _Frame) -> None:
        """Decode and write one labelled image with its objects and template queries."""
        assert frame.info is not None
        image = decode_image_message(msg, msgtype, f"{self.bag}: {frame.stamp_ns} ns")
        height, width = image.shape[:2]
        K = frame.info.K
        info_size = (frame.info.width, frame.info.height)
        if all(info_size) and info_size != (width, height):
            # the CameraInfo describes another resolution: scale K to this image (DESIGN.md)
            K = scale_intrinsics(K, width / info_size[0], height / info_size[1])
            self.summary.note("images whose size differs from CameraInfo (K scaled)")
        image_id = f"{self.bag.resolve().name}_{frame.stamp_ns}"
        objects = _objects(
            frame, K, width=width, height=height, image_id=image_id, summary=self.summary
        )
        if not objects:
            self.summary.skip("labelled images without usable objects")
            return
        self.output.add_image(
            ImageRecord(
                image_id=image_id,
                file_name=image_file_name(image_id, ".png"),
                width=width,
                height=height,
                K=K,
                scene=self.config.scene,
                camera_group=self.group,
                objects=objects,
                extra={"stamp_ns": frame.stamp_ns},
            ),
            image,
        )
        texts = template_captions(objects, width=width, config=self.config.templates)
        number = 0
        for obj, text in zip(objects, texts, strict=True):
            if text is None:
                self.summary.skip("template queries: no unambiguous template")
                continue
            self.output.add_query(
                QueryRecord(
                    query_id=f"{image_id}_q{number:02d}",
                    image_id=image_id,
                    split=frame.split,
                    type="caption",
                    text=text,
                    answer=obj.category_name,
                    target_object_id=obj.object_id,
                    camera_group=self.group,
                )
            )
            number += 1


# ---------------------------------------------------------------------------------------------
# CLI: llmi3d data from-bag
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `llmi3d data from-bag`."""
    parser.add_argument("bag", type=Path, help="rosbag2 folder (sqlite3 or mcap storage)")
    parser.add_argument(
        "--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic"
    )
    parser.add_argument("--camera-info-topic", required=True, help="sensor_msgs/CameraInfo topic")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels-topic", help="vision_msgs/Detection3DArray topic")
    source.add_argument(
        "--labels", type=Path, metavar="FILE", help="labels file (JSONL keyed by image stamp)"
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    default = {f.name: f.default for f in dataclasses.fields(BagConvertConfig)}  # one home
    parser.add_argument(
        "--slop-s", type=float, default=default["slop_s"], help="stamp pairing tolerance (s)"
    )
    parser.add_argument(
        "--train-frac", type=float, default=default["train_frac"], help="earliest frames -> train"
    )
    parser.add_argument(
        "--val-frac", type=float, default=default["val_frac"], help="next frames -> val"
    )
    parser.add_argument(
        "--name", default=default["name"], help="dataset name (default: the bag's name)"
    )
    parser.add_argument("--scene", default=default["scene"], help="scene label of the images")
    parser.add_argument(
        "--camera-group", default=default["camera_group"], help="camera group (default: from topic)"
    )
    parser.add_argument(
        "--assume-same-frame", action="store_true",
        help="accept labels whose frame_id differs from the image's (no TF is applied)",
    )  # fmt: skip
    add_output_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d data from-bag`; print the summary and return 0."""
    config = BagConvertConfig(
        image_topic=args.image_topic,
        camera_info_topic=args.camera_info_topic,
        labels_topic=args.labels_topic or "",
        labels_file="" if args.labels is None else str(args.labels),
        slop_s=args.slop_s,
        train_frac=args.train_frac,
        val_frac=args.val_frac,
        name=args.name,
        scene=args.scene,
        camera_group=args.camera_group,
        assume_same_frame=args.assume_same_frame,
    )
    summary = convert_bag(
        args.bag, args.out, config, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(summary)
    return 0
