"""llmi3d_core is fully typed: `mypy --strict llmi3d_core` finds nothing (see [tool.mypy]).

A strict checker catches an Optional read as a Tensor, or a tuple that grew, before a run does;
running it as a test keeps the annotations honest as the code changes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_passes_on_llmi3d_core() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "llmi3d_core"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
