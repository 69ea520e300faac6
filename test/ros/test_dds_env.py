"""Reaching a running demo or bringup from another shell (issue 15, item 3).

`scripts/run.sh env` prints the exports, `scripts/run.sh bringup` starts bringup confined and
records its domain, and llmi3d_bringup says when DDS is not confined: in its --help and on its
first line. Nothing here starts a node outside loopback: the unconfined runs use --dry-run,
which prints and starts nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmi3d_ros.bringup import BringupOptions, build_parser
from llmi3d_ros.dds_env import CONFINING, confinement_problems, export_lines, startup_lines

REPO = Path(__file__).resolve().parents[2]
RUN_SH = REPO / "scripts" / "run.sh"
PROFILE = str(REPO / "config" / "fastdds_loopback.xml")
CONFINED = {
    "ROS_DOMAIN_ID": "42",
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "FASTDDS_DEFAULT_PROFILES_FILE": PROFILE,
    "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
}


def run_sh(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, LLMI3D_VENV=sys.prefix, **env)
    return subprocess.run(
        ["bash", str(RUN_SH), *args], env=environ, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def unconfined_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CONFINING}


def test_confinement_problems_name_each_missing_setting() -> None:
    assert confinement_problems(CONFINED) == []
    problems = confinement_problems({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"})
    assert problems == [
        "ROS_AUTOMATIC_DISCOVERY_RANGE is unset, not LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE is unset",
        "RMW_IMPLEMENTATION is rmw_cyclonedds_cpp; the loopback profile is for rmw_fastrtps_cpp",
    ]
    missing = dict(CONFINED, FASTDDS_DEFAULT_PROFILES_FILE="/nonexistent.xml")
    assert confinement_problems(missing) == [
        "FASTDDS_DEFAULT_PROFILES_FILE=/nonexistent.xml does not exist"
    ]


def test_run_sh_env_prints_the_python_lines_and_they_eval(tmp_path: Path) -> None:
    """`scripts/run.sh env 42` = export_lines of the confined environment; eval sets them."""
    result = run_sh("env", "42", LLMI3D_DOMAIN_RECORD=str(tmp_path / "none"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == export_lines(CONFINED)
    script = 'eval "$(bash "$0" env 42)"; env'
    shell = subprocess.run(
        ["bash", "-c", script, str(RUN_SH)], env=unconfined_environ(), capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    seen = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    for name, value in CONFINED.items():
        assert seen[name] == value


def test_run_sh_env_rejects_a_bad_domain() -> None:
    result = run_sh("env", "300")
    assert result.returncode == 2
    assert "bad domain id '300'" in result.stderr


def test_run_sh_bringup_is_confined_and_env_finds_its_domain(tmp_path: Path) -> None:
    """run.sh bringup prints the exports of its domain first; run.sh env then gives that domain."""
    record = tmp_path / "ros_domain_id"
    result = run_sh("bringup", "--dry-run", LLMI3D_DOMAIN_RECORD=str(record), ROS_DOMAIN_ID="17")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("[llmi3d_bringup] DDS is confined to loopback, ROS domain 17.")
    assert lines[start:start + 7] == startup_lines(
        "llmi3d_bringup", dict(CONFINED, ROS_DOMAIN_ID="17")
    )  # fmt: skip
    assert any(line.endswith("llmi3d_node --ros-args --log-level info --params-file "
                             f"{REPO / 'config' / 'params.yaml'} -p use_sim_time:=false")
               for line in lines), lines  # fmt: skip

    again = run_sh("env", LLMI3D_DOMAIN_RECORD=str(record), ROS_DOMAIN_ID="99")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == export_lines(dict(CONFINED, ROS_DOMAIN_ID="17"))
    assert "the last 'scripts/run.sh bringup'" in again.stderr
    assert "ended" in again.stderr


def test_bringup_run_directly_says_dds_is_not_confined() -> None:
    """--help and the first line of output say so when the environment does not confine DDS."""
    bringup = str(Path(sys.executable).with_name("llmi3d_bringup"))
    env = unconfined_environ()
    help_text = subprocess.run(
        [bringup, "--help"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "not confined to loopback" in help_text
    assert "scripts/run.sh bringup" in " ".join(help_text.split())
    assert "In this shell, DDS is NOT confined" in " ".join(help_text.split())

    first = subprocess.run(
        [bringup, "--dry-run", "--synthetic-camera"], env=env, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout.splitlines()[0]  # fmt: skip
    assert first.startswith("[llmi3d_bringup] DDS is NOT confined to loopback (")
    assert "ROS_AUTOMATIC_DISCOVERY_RANGE is unset" in first


@pytest.mark.parametrize("environ", [CONFINED, {}], ids=["confined", "unconfined"])
def test_every_bringup_option_has_help(environ: dict[str, str]) -> None:
    parser = build_parser(environ)
    options = {a.dest: a.help for a in parser._actions if a.dest != "help"}
    assert set(options) >= {f.replace("-", "_") for f in BringupOptions.__dataclass_fields__}
    assert all(options.values()), [name for name, text in options.items() if not text]
