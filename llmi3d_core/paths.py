"""Where the package's shipped files (config/, presets, the DDS profile) live, without ROS.

In a source or editable install they sit next to the packages; after `colcon build` or a regular
pip install, setup.py's data_files put them under <prefix>/share/llmi3d_ros/.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "llmi3d_ros"


def share_dir() -> Path:
    """Return the directory holding `config/` and `launch/`.

    Raises:
        FileNotFoundError: when neither the source tree nor an installed share directory exists.
    """
    candidates = [
        Path(__file__).resolve().parents[1],
        Path(sys.prefix) / "share" / PACKAGE,
    ]
    for candidate in candidates:
        if (candidate / "config").is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"llmi3d_ros share directory not found; looked in: {tried}")


def config_path(*parts: str) -> Path:
    """Return a path under the shipped config/ directory, such as params.yaml."""
    return share_dir().joinpath("config", *parts)
