"""Test-session set-up shared by every suite.

DDS is confined to loopback before anything imports rclpy: Fast DDS would otherwise multicast its
discovery on every network interface. Each pytest run gets a ROS domain of its own so that runs in
parallel on one machine do not talk to each other.
"""

import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_loopback.xml")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
