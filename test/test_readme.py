"""README.md: its accuracy paragraph is generated from BENCHMARKS.md, and the two commands stay."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from readme_accuracy import SECTION, anchor, block, replace_block  # noqa: E402


def test_accuracy_paragraph_agrees_with_benchmarks() -> None:
    """Rerun `python benchmarks/readme_accuracy.py` after regenerating BENCHMARKS.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    benchmarks = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert replace_block(readme, block(benchmarks)) == readme, (
        "README.md's accuracy paragraph is stale: run python benchmarks/readme_accuracy.py"
    )
    assert f"## {SECTION}" in benchmarks  # the paragraph's link target
    assert f"(BENCHMARKS.md#{anchor(SECTION)})" in readme


def test_anchor_follows_github() -> None:
    assert anchor("1. Accuracy on IG3D-Synth") == "1-accuracy-on-ig3d-synth"
    assert anchor("5. Soak: bringup under load") == "5-soak-bringup-under-load"


def test_the_two_commands_are_still_there() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in section.splitlines()
                if line.startswith("scripts/run.sh")]  # fmt: skip
    assert commands == ["scripts/run.sh demo", "scripts/run.sh test"]
