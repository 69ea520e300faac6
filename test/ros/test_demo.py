"""llmi3d_demo: what it prints (end to end with the tiny preset), where its pictures go, and how
it counts queries that name a category the served model was not trained on.

Issue 15: the demo printed neither its ROS domain (item 3) nor where this run's pictures are, and
out/demo/ kept the PNGs of every earlier run (item 5).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

from llmi3d_core.data.format import QueryRecord
from llmi3d_core.model import LLMI3D, get_preset
from llmi3d_core.model.checkpoint import save_checkpoint
from llmi3d_ros.demo import (
    Outcome,
    held_out_category,
    new_run_dir,
    summary,
    trained_categories,
)


def test_new_run_dir_gives_each_run_its_own_folder(tmp_path: Path) -> None:
    first, second, third = (new_run_dir(tmp_path / "demo") for _ in range(3))
    assert len({first, second, third}) == 3
    assert all(d.is_dir() and d.parent == tmp_path / "demo" for d in (first, second, third))
    assert re.fullmatch(r"\d{8}-\d{6}", first.name)


def test_queries_of_held_out_categories_are_starred_and_counted_apart(tmp_path: Path) -> None:
    """The demo's scenes come from their own seed: a query may name a category the served model
    was never trained on. The summary stars it, names the category and gives the numbers again
    without such queries; a preset (no trained categories) marks nothing."""
    config = get_preset("tiny")
    config = dataclasses.replace(
        config, detector=dataclasses.replace(config.detector, categories=("car", "chair"))
    )
    checkpoint = save_checkpoint(LLMI3D(config, load_pretrained=False), tmp_path / "ckpt")
    categories = trained_categories(str(checkpoint))
    assert categories == {"car", "chair"} and trained_categories("") == frozenset()

    def query(answer: str) -> QueryRecord:
        return QueryRecord("q", "000001", "test", "caption", f"The {answer}.", answer, "o")

    assert held_out_category(query("bus"), categories) == "bus"
    assert held_out_category(query("car"), categories) == ""
    assert held_out_category(query("bus"), frozenset()) == ""
    outcomes = [
        Outcome("000001", "caption", "The car.", "car", 0.6, 0.1, "ok", True),
        Outcome("000001", "caption", "The bus.", "", 0.0, 0.1, "not found", False, "bus"),
        Outcome("000002", "question", "What seats one?", "car", 0.1, 0.1, "ok", False),
    ]
    lines = summary(outcomes).splitlines()
    assert lines[2].startswith("| 000001 | caption | The car.")
    assert lines[3].startswith("| 000001 | caption * | The bus.")
    assert lines[-3].startswith("summary: Acc@0.25 1/3 (33 %), grounding 1/3 ")
    assert lines[-2].startswith("* names a category held out of the model's training (bus)")
    assert lines[-1].startswith("on the categories it was trained on: Acc@0.25 1/2 (50 %), "
                                "grounding 1/2 ")  # fmt: skip
    plain = summary([dataclasses.replace(o, held_out="") for o in outcomes]).splitlines()
    assert plain[-1].startswith("summary: Acc@0.25 1/3 ") and " * " not in "\n".join(plain)


def test_the_summary_gives_the_floor_answers_apart() -> None:
    """Queries asked again with the node told where the floor is: their own column and line."""
    outcomes = [
        Outcome("000001", "caption", "The car.", "car", 0.1, 0.1, "ok", True, "", 0.4, True),
        Outcome("000001", "question", "What seats one?", "car", 0.0, 0.1, "ok", False, "", 0.3),
        Outcome("000002", "caption", "The lamp.", "lamp", 0.2, 0.1, "ok", True),  # not asked
    ]
    lines = summary(outcomes).splitlines()
    assert lines[0] == "| scene | type | query | answer | 3D IoU | 3D IoU, floor given | latency |"
    assert lines[2] == "| 000001 | caption | The car. | car | 0.100 | 0.400 | 0.10 s |"
    assert lines[4] == "| 000002 | caption | The lamp. | lamp | 0.200 | - | 0.10 s |"
    assert lines[-2].startswith("summary: Acc@0.25 0/3 (0 %), grounding 2/3 ")
    assert lines[-1].startswith(
        "with the camera's floor given (node parameter floor_frame, the camera's pose on /tf; "
        "README): Acc@0.25 2/2 (100 %), grounding 1/1 "
    )


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
    # each query twice: as the model places it, then with the node told where the floor is
    # (through TF: the camera's pose on /tf under base_footprint)
    assert len([line for line in lines if line.startswith("  Q (")]) == 4
    again = "  asked again with the node told where the floor is"
    assert any(line.startswith(again) for line in lines)
    assert any(line.startswith("with the camera's floor given") for line in lines)
    pictures = sorted(p.name for p in run_dir.glob("*.png"))
    assert len(pictures) == 4, pictures
    assert len([name for name in pictures if name.endswith("_floor.png")]) == 2, pictures
    assert sorted(p.name for p in out.iterdir()) == sorted(["old_run", run_dir.name])
    assert stale.exists()  # other runs' folders are left alone
