"""Where the package's files live, without ROS: shipped ones (config/) and rebuilt ones (cache).

Shipped files sit next to the packages in a source or editable install; after `colcon build` or a
regular pip install, setup.py's data_files put them under <prefix>/share/llmi3d_ros/.
"""

from __future__ import annotations

import os
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


def cache_dir(*parts: str) -> Path:
    """Return a path under the user cache: things llmi3d can rebuild, so deleting them is safe.

    $LLMI3D_CACHE_DIR when set, else $XDG_CACHE_HOME/llmi3d, else ~/.cache/llmi3d. Holds the
    default model's run, the synthetic camera's dataset and LLMs converted from GGUF.
    """
    root = os.environ.get("LLMI3D_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "llmi3d") if xdg else str(Path.home() / ".cache" / "llmi3d")
    return Path(root).expanduser().joinpath(*parts)
