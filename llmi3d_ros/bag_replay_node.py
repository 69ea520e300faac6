"""llmi3d_bag_replay: play a rosbag2 recording (sqlite3 or mcap) without rosbag2_py or ros2cli.

    llmi3d_bag_replay --ros-args -p bag:=/data/kitchen_bag -p rate:=1.0 -p loop:=true

rosbags reads the bag; messages are published as the raw CDR bytes recorded, on their recorded
topic names (remap with -r), keeping recorded header stamps. With `publish_clock` the bag time is
published on /clock so nodes started with use_sim_time follow the recording.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.publisher import Publisher
from rosbags.highlevel import AnyReader
from rosgraph_msgs.msg import Clock

from llmi3d_ros.spinning import run_until_shutdown


def message_class(msgtype: str) -> Any:
    """Import the rclpy class of a type name like 'sensor_msgs/msg/Image'.

    Raises:
        ImportError: when the interface package is not installed.
    """
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


class BagReplayNode(Node):
    """Publishes the messages of one bag in recorded order and timing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("llmi3d_bag_replay", **kwargs)

        def declare(name: str, default: Any, text: str) -> Any:
            return self.declare_parameter(
                name, default, ParameterDescriptor(description=text, read_only=True)
            ).value

        self.bag = Path(declare("bag", "", "rosbag2 directory (or .mcap/.db3 file) to play"))
        self.topics = list(declare("topics", [""], "topics to play; [''] = every known type"))
        self.rate = float(declare("rate", 1.0, "playback speed factor"))
        self.loop = bool(declare("loop", False, "start again at the end"))
        self.publish_clock = bool(declare("publish_clock", False, "publish bag time on /clock"))
        if not str(self.bag) or str(self.bag) == ".":
            raise ValueError("parameter 'bag' is required: -p bag:=/path/to/bag")
        if self.rate <= 0:
            raise ValueError(f"parameter 'rate' must be > 0, got {self.rate}")
        self._bag_publishers: dict[str, Publisher] = {}
        self._clock_pub = self.create_publisher(Clock, "/clock", 10) if self.publish_clock else None

    def publisher_for(self, topic: str, msgtype: str) -> Publisher | None:
        """The publisher of a bag topic (created on first use); None for an unknown type."""
        if topic not in self._bag_publishers:
            try:
                msg_class = message_class(msgtype)
                self._bag_publishers[topic] = self.create_publisher(msg_class, topic, 10)
            except (ImportError, AttributeError, ValueError) as err:
                self.get_logger().warning(f"skipping {topic}: cannot publish {msgtype}: {err}")
                return None
        return self._bag_publishers.get(topic)

    def play_once(self) -> int:
        """Play the bag from start to end in (scaled) real time; return messages published."""
        wanted = {t for t in self.topics if t}
        with AnyReader([self.bag]) as reader:
            connections = [c for c in reader.connections if not wanted or c.topic in wanted]
            missing = wanted - {c.topic for c in reader.connections}
            if missing:
                have = ", ".join(sorted({c.topic for c in reader.connections}))
                raise ValueError(f"bag {self.bag} has no topic {sorted(missing)}; it has: {have}")
            start_wall = time.monotonic()
            start_bag: int | None = None
            count = 0
            for connection, bag_ns, raw in reader.messages(connections=connections):
                if not rclpy.ok():
                    break
                start_bag = bag_ns if start_bag is None else start_bag
                due = start_wall + (bag_ns - start_bag) / 1e9 / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                publisher = self.publisher_for(connection.topic, connection.msgtype)
                if publisher is None:
                    continue
                if self._clock_pub is not None:
                    clock = Clock()
                    clock.clock.sec, clock.clock.nanosec = divmod(bag_ns, 1_000_000_000)
                    self._clock_pub.publish(clock)
                publisher.publish(bytes(raw))
                count += 1
        return count

    def run(self) -> None:
        """Play once, or forever with `loop`."""
        while rclpy.ok():
            count = self.play_once()
            self.get_logger().info(f"played {count} message(s) from {self.bag}")
            if not self.loop:
                break


def main(args: list[str] | None = None) -> None:
    """Run the bag player (console script `llmi3d_bag_replay`)."""
    rclpy.init(args=args)  # not init_rclpy: Ctrl-C must cut run()'s sleeps short
    node = None
    try:
        node = BagReplayNode()
        run_until_shutdown(node.run)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # stopped while the node was being built
    except ValueError as err:
        print(f"llmi3d_bag_replay: error: {err}")
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
