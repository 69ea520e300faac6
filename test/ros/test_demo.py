"""llmi3d_demo end to end with the tiny preset: what it prints, and where its pictures go.

Issue 15: the demo printed neither its ROS domain (item 3) nor where this run's pictures are, and
out/demo/ kept the PNGs of every earlier run (item 5).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from llmi3d_ros.demo import new_run_dir


def test_new_run_dir_gives_each_run_its_own_folder(tmp_path: Path) -> None:
    first, second, third = (new_run_dir(tmp_path / "demo") for _ in range(3))
    assert len({first, second, third}) == 3
    assert all(d.is_dir() and d.parent == tmp_path / "demo" for d in (first, second, third))
    assert re.fullmatch(r"\d{8}-\d{6}", first.name)


def test_demo_prints_its_domain_and_writes_pictures_to_its_own_folder(
    ros_context: None, tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    stale = out / "old_run" / "00_stale.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("llmi3d_demo")), "--preset", "tiny", "--out",
         str(out), "--images", "1", "--queries-per-image", "2"],
        capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    domain = os.environ["ROS_DOMAIN_ID"]
    assert lines[0] == f"[demo] DDS is confined to loopback, ROS domain {domain}."
    assert f"    export ROS_DOMAIN_ID={domain}" in lines
    announced = [line for line in lines if line.startswith("[demo] debug pictures of this run go")]
    assert len(announced) == 1
    run_dir = Path(announced[0].rsplit(" ", 1)[1])
    assert run_dir.parent == out.resolve()
    assert f"[demo] debug pictures of this run in {run_dir}" in lines
    # every answer is on a frame of the scene asked about (a busy node once answered a new
    # scene's queries on the previous scene's frame: wrong pictures, no IoU)
    assert "answered on a frame of another scene" not in result.stdout
    assert "answered on no frame of this scene" not in result.stdout
    assert len([line for line in lines if line.startswith("  Q (")]) == 2
    pictures = sorted(p.name for p in run_dir.glob("*.png"))
    assert len(pictures) == 2, pictures
    assert sorted(p.name for p in out.iterdir()) == sorted(["old_run", run_dir.name])
    assert stale.exists()  # other runs' folders are left alone
