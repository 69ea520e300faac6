"""benchmarks/run_benchmarks.py --size smoke: every section runs and lands in the markdown.

The smoke size uses the tiny preset and a handful of samples and steps, so this catches
breakage of the benchmark pipeline (training/eval APIs, recipes, the node, the markdown), not
performance. The script is run as a subprocess, exactly as a user runs it, in this test
session's own ROS domain with DDS on loopback (test/conftest.py sets the environment).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_benchmarks.py"
SECTIONS = (
    "## Machine",
    "## Sizes",
    "## 1. Accuracy on IG3D-Synth",
    "### Main comparison",
    "### Ablation ladders",
    "## 2. Latency",
    "## 3. Training throughput",
    "## 4. Peak memory of the node",
)


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the smoke size once for the module; BENCHMARKS.md and results.json are in it."""
    out_dir = tmp_path_factory.mktemp("bench")
    out = out_dir / "BENCHMARKS.md"
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--size",
            "smoke",
            "--out",
            str(out),
            "--workdir",
            str(out_dir / "work"),
            "--ros-domain-id",
            os.environ["ROS_DOMAIN_ID"],
            "--json",
            str(out_dir / "results.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=out_dir,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out_dir


@pytest.fixture(scope="module")
def smoke_markdown(smoke_dir: Path) -> str:
    return (smoke_dir / "BENCHMARKS.md").read_text(encoding="utf-8")


def test_every_section_is_there(smoke_markdown: str) -> None:
    """Machine, sizes and the four numbered sections, none FAILED or skipped."""
    for heading in SECTIONS:
        assert heading in smoke_markdown, f"{heading!r} missing"
    assert "FAILED" not in smoke_markdown
    assert "Not run" not in smoke_markdown


def test_machine_and_provenance(smoke_markdown: str) -> None:
    """The machine table names the torch version and device; the command line is stated."""
    import torch

    assert f"| torch | {torch.__version__}" in smoke_markdown
    assert "run_benchmarks.py --size smoke" in smoke_markdown
    assert re.search(r"\| devices \| CPU", smoke_markdown)


def test_section_contents(smoke_markdown: str) -> None:
    """Each section has its figures: verdicts, ratios, samples/s, RSS."""
    assert "paper: the 3D Query beats Text3D" in smoke_markdown
    assert re.search(r"\*\*(agrees|disagrees|tie)\*\*", smoke_markdown)
    assert "Table XIII: rotation representation" in smoke_markdown
    assert re.search(r"\| repeated, same frame \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", smoke_markdown)
    assert re.search(r"Repeated / first: \*\*[\d.]+\*\*", smoke_markdown)
    assert re.search(r"\| first \| [\d.]+ \| [\d.]+ \| [+-]\d+% \|", smoke_markdown)
    assert re.search(r"\| tiny_synth \| tiny \| \d+ x \d+ \| .* \| [\d.]+ \|", smoke_markdown)
    assert re.search(r"\| \d+ \| \d+ \| (\d+|n/a) \| \d+ \| \d+ \|", smoke_markdown)


def test_rerender_from_json_is_identical(smoke_dir: Path, tmp_path: Path) -> None:
    """--from-json renders the saved results again (and says so), measuring nothing."""
    out = tmp_path / "again.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--from-json",
            str(smoke_dir / "results.json"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    again = out.read_text(encoding="utf-8")
    first = (smoke_dir / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "Rendered again on" in again
    strip = re.compile(r" Rendered again on .*? the numbers are the run's\.")
    assert strip.sub("", again) == first


def test_unknown_section_is_rejected(tmp_path: Path) -> None:
    """--sections with a typo fails before any work, naming the allowed sections."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sections", "latncy", "--out", str(tmp_path / "B.md")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown section(s) ['latncy']; available: accuracy, latency" in proc.stderr
    assert not (tmp_path / "B.md").exists()


# --------------------------------------------------------------------------------------------
# The opt-in soak section: `--only soak` into an existing BENCHMARKS.md
# --------------------------------------------------------------------------------------------

BASE_MARKDOWN = """# Benchmarks

Generated by `python benchmarks/run_benchmarks.py --size reduced` on a day.

## Headline

- Acc@0.25 on IG3D-Synth test: LLMI3D 0.0%
- Soak (30 min, smol, camera 10 Hz, a query a second): **7 errors**, old figures

## Machine

| CPU | x |

## 4. Peak memory of the node

| 1 | 2 |

## 5. Soak: bringup under load

old soak text
"""


def test_soak_only_replaces_its_section(tmp_path: Path) -> None:
    """--only soak (tiny, 0.2 min) replaces the soak section and headline line, nothing else.

    The bringup, camera, node, standing query, service calls, diagnostics and the clean stop
    all run for real; the figures mean nothing at this length.
    """
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(BASE_MARKDOWN, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "soak", "--size", "smoke", "--minutes", "0.2",
         "--out", str(out), "--workdir", str(tmp_path / "work"),
         "--ros-domain-id", os.environ["ROS_DOMAIN_ID"]],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert "| errors (must be 0) | **0** |" in proc.stdout  # the table, printed
    markdown = out.read_text(encoding="utf-8")
    before, soak = markdown.split("## 5. Soak: bringup under load\n")
    assert "old soak text" not in soak and "old figures" not in markdown
    assert re.search(r"_Measured by `python benchmarks/run_benchmarks.py --only soak --size "
                     r"smoke --minutes 0.2` on ", soak)  # fmt: skip
    assert "| errors (must be 0) | **0** |" in soak
    assert re.search(r"\| service calls: answered / failed / no answer \| \d+ / 0 / 0 ", soak)
    assert re.search(r"\| frames the node never received \| \d+ of \d+ ", soak)
    assert re.search(r"\| node RSS growth \(must stay under 5 %\) \| [+-][\d.]+ % ", soak)
    assert re.search(r"- Soak \(0.2 min, tiny, camera 10 Hz, a query a second\): \*\*0 errors\*\*",
                     before)  # fmt: skip
    unchanged = [line for line in BASE_MARKDOWN.split("## 5.", maxsplit=1)[0].splitlines()
                 if not line.startswith("- Soak")]  # fmt: skip
    assert [line for line in before.splitlines() if not line.startswith("- Soak")] == unchanged


def test_a_plain_run_keeps_the_soak_section_it_finds() -> None:
    """splice: a new full render (soak placeholder) takes the soak block and headline line."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from run_benchmarks import splice

    fresh = BASE_MARKDOWN.replace("old soak text", "_Opt-in (about 30 minutes): ..._").replace(
        "- Soak (30 min, smol, camera 10 Hz, a query a second): **7 errors**, old figures\n", ""
    )
    kept = splice(fresh, BASE_MARKDOWN, ["soak"])
    assert kept == BASE_MARKDOWN
    # and the other way round: a placeholder never replaces a measured section
    assert splice(BASE_MARKDOWN, fresh, ["soak"]) == BASE_MARKDOWN
