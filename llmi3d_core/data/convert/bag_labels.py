"""The 3D box labels of a bag: vision_msgs/Detection3DArray messages or a labels file.

Both become LabelFrames (the boxes labelled for one image stamp) for the bag converter (bag.py),
with vision_msgs' BoundingBox3D meaning: centre and orientation (x, y, z, w; object -> camera)
in the camera optical frame, size = extents along the object's (x, y, z) = (L, H, W) in metres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmi3d_core.data.convert.common import (
    expect_array,
    expect_int,
    expect_key,
    expect_str,
    load_json_records,
)
from llmi3d_core.errors import DataFormatError


@dataclass(frozen=True)
class LabelBox:
    """One labelled 3D box in the camera optical frame.

    Attributes:
        class_id: the object phrase.
        center: (3,) box centre, metres.
        orientation: (4,) unit quaternion (x, y, z, w), object -> camera.
        size: (3,) extents along the object's x, y, z = (L, H, W), metres.
        id: the label's id ("" when none).
    """

    class_id: str
    center: np.ndarray
    orientation: np.ndarray
    size: np.ndarray
    id: str = ""


@dataclass(frozen=True)
class LabelFrame:
    """All boxes labelled for one image stamp.

    Attributes:
        stamp_ns: the stamp of the image they belong to, ns.
        frame_id: their frame ("" = unknown; taken to be the image's).
        boxes: the boxes.
        where: topic and stamp, or file and line, for messages.
    """

    stamp_ns: int
    frame_id: str
    boxes: list[LabelBox]
    where: str = ""


def _box_from_detection(detection: Any, where: str) -> LabelBox:
    """vision_msgs/Detection3D -> LabelBox (best-scoring hypothesis gives the class)."""
    if not detection.results:
        raise DataFormatError(f"{where}: a Detection3D has no results (no class_id)")
    best = max(detection.results, key=lambda r: r.hypothesis.score)
    class_id = str(best.hypothesis.class_id).strip()
    if not class_id:
        raise DataFormatError(f"{where}: a Detection3D has an empty class_id")
    pose, size = detection.bbox.center, detection.bbox.size
    return LabelBox(
        class_id=class_id,
        center=np.array([pose.position.x, pose.position.y, pose.position.z]),
        orientation=np.array(
            [pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w]
        ),
        size=np.array([size.x, size.y, size.z]),
        id=str(detection.id),
    )


def labels_from_message(msg: Any, stamp_ns: int, where: str) -> LabelFrame:
    """vision_msgs/Detection3DArray -> LabelFrame."""
    frame_id = str(msg.header.frame_id)
    boxes = []
    for det in msg.detections:
        if det.header.frame_id and frame_id and det.header.frame_id != frame_id:
            raise DataFormatError(
                f"{where}: a detection is in frame {det.header.frame_id!r} but its array in "
                f"{frame_id!r}; one frame per message is expected"
            )
        frame_id = frame_id or str(det.header.frame_id)
        boxes.append(_box_from_detection(det, where))
    return LabelFrame(stamp_ns=stamp_ns, frame_id=frame_id, boxes=boxes, where=where)


def load_labels_file(path: str | Path) -> list[LabelFrame]:
    """Read a labels file: one labelled image stamp per JSON Lines line (or a JSON list of them).

        {"stamp_ns": 1700000000100000000, "frame_id": "camera_color_optical_frame",
         "objects": [{"class_id": "mug", "center": [0.2, -0.1, 2.0], "size": [0.3, 0.2, 0.1],
                      "orientation": [0.0, 0.7071068, 0.0, 0.7071068], "id": "3"}]}

    - "stamp_ns" (int, ns) or "stamp": {"sec", "nanosec"}: the header stamp of the image;
    - "frame_id" (optional): the frame of the boxes, must be the image's optical frame;
    - per object: "class_id" (the phrase), "center" [x, y, z] m in the camera optical frame,
      "size" [x, y, z] extents in the object's frame = (L, H, W) m as vision_msgs'
      BoundingBox3D.size, optional "orientation" [x, y, z, w] (default identity), optional "id".

    Raises:
        DataFormatError: naming the file and line (or list index) of a malformed entry.
    """
    entries = load_json_records(Path(path), "labels file")
    return [_parse_label_entry(entry, where) for where, entry in entries]


def _parse_label_entry(entry: Any, where: str) -> LabelFrame:
    if not isinstance(entry, dict):
        raise DataFormatError(f"{where}: expected a JSON object with stamp_ns and objects")
    if "stamp_ns" in entry:
        stamp_ns = expect_int(entry["stamp_ns"], f"{where}.stamp_ns")
    elif "stamp" in entry:
        stamp = entry["stamp"]
        sec = expect_int(expect_key(stamp, "sec", f"{where}.stamp"), f"{where}.stamp.sec")
        nanosec = expect_int(
            expect_key(stamp, "nanosec", f"{where}.stamp"), f"{where}.stamp.nanosec"
        )
        stamp_ns = sec * 1_000_000_000 + nanosec
    else:
        raise DataFormatError(f"{where}: missing key 'stamp_ns' (or 'stamp': {{sec, nanosec}})")
    objects = expect_key(entry, "objects", where)
    if not isinstance(objects, list):
        raise DataFormatError(f"{where}.objects: expected a list, got {type(objects).__name__}")
    boxes = []
    for index, obj in enumerate(objects):
        at = f"{where}.objects[{index}]"
        size = expect_array(expect_key(obj, "size", at), (3,), f"{at}.size")
        if np.any(size <= 0):
            raise DataFormatError(f"{at}.size: expected 3 positive extents (L, H, W) m, got {size}")
        orientation = expect_array(obj.get("orientation", [0, 0, 0, 1]), (4,), f"{at}.orientation")
        if np.linalg.norm(orientation) < 1e-9:
            raise DataFormatError(f"{at}.orientation: expected a non-zero quaternion (x, y, z, w)")
        boxes.append(
            LabelBox(
                class_id=expect_str(expect_key(obj, "class_id", at), f"{at}.class_id").strip(),
                center=expect_array(expect_key(obj, "center", at), (3,), f"{at}.center"),
                orientation=orientation,
                size=size,
                id=str(obj.get("id", "")),
            )
        )
    frame_id = entry.get("frame_id", "")
    if not isinstance(frame_id, str):
        raise DataFormatError(f"{where}.frame_id: expected a string, got {frame_id!r}")
    return LabelFrame(stamp_ns=stamp_ns, frame_id=frame_id, boxes=boxes, where=where)
