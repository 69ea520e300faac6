"""Build script: one distribution `llmi3d_ros` carrying the `llmi3d_core` and `llmi3d_ros` packages.

Works with colcon (ament_python, installs launch/config into share/llmi3d_ros) and with plain pip
(`pip install -e .`), which is what scripts/bootstrap.sh uses.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "llmi3d_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["llmi3d_core", "llmi3d_core.*", "llmi3d_ros", "llmi3d_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (
            f"share/{PACKAGE}/config",
            [*glob("config/*.yaml"), *glob("config/*.xml"), *glob("config/*.rviz")],
        ),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
        (f"share/{PACKAGE}/config/model", glob("config/model/*.yaml")),
    ],
    include_package_data=True,
    zip_safe=False,
    maintainer="llmi3d_ros maintainers",
    maintainer_email="maintainers@users.noreply.github.com",
    description="Language-driven single-image 3D object grounding (LLMI3D) for ROS 2.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "llmi3d = llmi3d_core.cli:main",
            "llmi3d_node = llmi3d_ros.llmi3d_node:main",
            "llmi3d_synthetic_camera = llmi3d_ros.synthetic_camera_node:main",
            "llmi3d_bag_replay = llmi3d_ros.bag_replay_node:main",
            "llmi3d_bringup = llmi3d_ros.bringup:main",
            "llmi3d_demo = llmi3d_ros.demo:main",
        ],
    },
)
