"""Test-session set-up shared by every suite.

DDS is confined to loopback before anything imports rclpy: Fast DDS would otherwise multicast its
discovery on every network interface. Each pytest run gets a ROS domain of its own so that runs in
parallel on one machine do not talk to each other, and a user cache of its own (LLMI3D_CACHE_DIR),
removed at exit, so that tests neither read nor fill ~/.cache/llmi3d.
"""

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_loopback.xml")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))

if "LLMI3D_CACHE_DIR" not in os.environ:
    os.environ["LLMI3D_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmi3d-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LLMI3D_CACHE_DIR"], ignore_errors=True)
