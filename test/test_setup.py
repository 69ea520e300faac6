"""The project's own set-up: idempotent bootstrap, lint clean, core free of ROS."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROS_MODULES = {
    "rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "vision_msgs", "visualization_msgs",
    "diagnostic_msgs", "lifecycle_msgs", "llmi3d_msgs", "llmi3d_ros", "launch", "launch_ros",
    "tf2_msgs", "tf2_ros",
}  # fmt: skip


def test_bootstrap_second_run_is_quick_and_changes_nothing() -> None:
    """Re-running the set-up on the environment running this test installs nothing."""
    env = dict(os.environ, LLMI3D_VENV=sys.prefix)
    result = subprocess.run(
        [str(REPO / "scripts" / "bootstrap.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is up to date" in result.stdout, result.stdout
    assert "installing" not in result.stdout, result.stdout


def test_ruff_passes() -> None:
    """Lint and formatting are part of the tests."""
    ruff = Path(sys.prefix) / "bin" / "ruff"
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [str(ruff), *args], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_core_never_imports_ros() -> None:
    """llmi3d_core stays usable without ROS (training machines, notebooks)."""
    offenders = []
    for path in sorted((REPO / "llmi3d_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0] in ROS_MODULES
            ]
    assert not offenders
