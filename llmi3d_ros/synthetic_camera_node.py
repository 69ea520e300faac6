"""llmi3d_synthetic_camera: publishes IG3D-Synth scenes as a camera would, with ground truth.

Lets you try the whole pipeline without a camera: `image_raw` (rgb8) and `camera_info` with equal
stamps, plus `~/ground_truth` (Detection3DArray: class_id = category, id = object id, same header)
so RViz can show the true boxes next to the predicted ones. Each image is held for `hold_s`
seconds and republished at `rate_hz` with fresh stamps, like a camera looking at a still scene.
Where the scene's record says where the floor is (the generator's camera height and pitch), the
camera's optical frame is also published on /tf under `floor_frame` (base_footprint), as a robot's
robot_state_publisher would: llmi3d_node's `floor_frame` parameter reads it.

The scenes come from a dataset directory (`dataset`); when it is empty, a small one is generated
from `seed` into the user cache (~/.cache/llmi3d/synthetic_camera/seed<seed>_n<num_images>).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from llmi3d_core.data.format import Dataset, ImageRecord
from llmi3d_core.data.images import load_rgb
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.ground_plane import record_ground_plane
from llmi3d_core.paths import cache_dir
from llmi3d_ros.conversions import (
    box_detection,
    camera_info_from_k,
    rgb_to_image,
    transform_stamped,
)
from llmi3d_ros.spinning import init_rclpy, run_until_shutdown

# the TF parent of the camera's pose: a robot's frame on the floor under it (REP 120)
FLOOR_FRAME = "base_footprint"


def ensure_dataset(dataset: str, seed: int, num_images: int) -> Path:
    """Return the dataset directory to play, generating a synthetic one when none is given."""
    if dataset:
        return Path(dataset).expanduser()
    from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset  # noqa: PLC0415 (the generator is needed only once per dataset)

    out = cache_dir("synthetic_camera", f"seed{seed}_n{num_images}")
    if not (out / "dataset.json").is_file():
        generate_dataset(SynthConfig(num_images=num_images, seed=seed), out, overwrite=True)
    return out


def ground_truth_message(image: ImageRecord, header: Header) -> Detection3DArray:
    """The image's annotated objects as a Detection3DArray (score 1, id = object id)."""
    array = Detection3DArray(header=header)
    for obj in image.objects:
        box = (obj.center_cam, obj.dims_lwh, obj.R_cam)
        array.detections.append(box_detection(header, obj.object_id, obj.category_name, 1.0, box))
    return array


class SyntheticCameraNode(Node):
    """Publishes a dataset's images in a loop; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("llmi3d_synthetic_camera", **kwargs)

        def declare(name: str, default: Any, text: str) -> Any:
            return self.declare_parameter(
                name, default, ParameterDescriptor(description=text, read_only=True)
            ).value

        dataset = declare("dataset", "", "dataset directory to play; empty = generate one")
        seed = declare("seed", 7, "seed of the generated dataset")
        num_images = declare("num_images", 8, "images in the generated dataset")
        split = declare("split", "", "play only images with queries of this split; empty = all")
        self.rate_hz = declare("rate_hz", 5.0, "publish rate")
        self.hold_s = declare("hold_s", 8.0, "seconds each image is shown before the next")
        self.frame_id = declare("frame_id", "camera_optical_frame", "frame_id of every header")
        self.loop = declare("loop", True, "start again after the last image")
        self.floor_frame = declare(
            "floor_frame", FLOOR_FRAME,
            "TF parent of frame_id on /tf: on the floor under the camera, z up; empty = no TF",
        )  # fmt: skip

        root = ensure_dataset(dataset, seed, num_images)
        self.dataset: Dataset = read_dataset(root)
        wanted = {q.image_id for q in self.dataset.queries if not split or q.split == split}
        self.images = [im for im in self.dataset.images if im.image_id in wanted]
        if not self.images:
            raise ValueError(f"dataset {root} has no image with queries of split {split!r}")
        self._pictures: dict[str, np.ndarray] = {}
        self.index = 0
        self.shown_since = time.monotonic()
        self.image_pub = self.create_publisher(Image, "image_raw", qos_profile_sensor_data)
        self.info_pub = self.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
        self.truth_pub = self.create_publisher(Detection3DArray, "~/ground_truth", 10)
        self.tf_pub = self.create_publisher(TFMessage, "/tf", 100)
        self.timer = self.create_timer(1.0 / self.rate_hz, self.on_timer)
        self.get_logger().info(
            f"playing {len(self.images)} image(s) of {root} at {self.rate_hz} Hz, "
            f"{self.hold_s} s each"
        )

    def picture(self, image: ImageRecord) -> np.ndarray:
        """The image's pixels as RGB (read once, then cached)."""
        if image.image_id not in self._pictures:
            self._pictures[image.image_id] = load_rgb(self.dataset.root / image.file_name, image)
        return self._pictures[image.image_id]

    def on_timer(self) -> None:
        """Publish the current image, CameraInfo, ground truth and camera pose with one stamp."""
        now = time.monotonic()
        if now - self.shown_since >= self.hold_s:
            self.shown_since = now
            if self.index + 1 < len(self.images) or self.loop:
                self.index = (self.index + 1) % len(self.images)
        image = self.images[self.index]
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        floor = record_ground_plane(image.extra)
        if floor is not None and self.floor_frame:  # first, so that it is there for the image
            parent = Header(stamp=header.stamp, frame_id=self.floor_frame)
            pose = transform_stamped(parent, self.frame_id, floor.camera_pose())
            self.tf_pub.publish(TFMessage(transforms=[pose]))
        self.image_pub.publish(rgb_to_image(self.picture(image), header))
        self.info_pub.publish(camera_info_from_k(image.K, image.width, image.height, header))
        self.truth_pub.publish(ground_truth_message(image, header))


def main(args: list[str] | None = None) -> None:
    """Run the synthetic camera (console script `llmi3d_synthetic_camera`)."""
    init_rclpy(args)
    node = None
    try:
        node = SyntheticCameraNode()
        run_until_shutdown(lambda: rclpy.spin(node))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # stopped while the node was being built
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
