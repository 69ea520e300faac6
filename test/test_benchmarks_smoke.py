"""benchmarks/run_benchmarks.py --size smoke: every section runs and lands in the markdown.

The smoke size uses the tiny preset and a handful of samples and steps, so this catches
breakage of the benchmark pipeline (training/eval APIs, staged recipes, the node, the markdown),
not performance. The script is run as a subprocess, exactly as a user runs it, in this test
session's own ROS domain with DDS on loopback and its own user cache (test/conftest.py sets the
environment; the held-out test set of the default-model table is made there). At this size the
tiny `llmi3d` ladder row stands in for the default model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
    "### Default model on its held-out test set",
    "### Decoding ablations of the default model",
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
    """Each section has its figures: the default table, verdicts, ratios, samples/s, RSS."""
    for row in (
        "| LLMI3D (default) |",
        "| heads at the true cell (upper bound of pointing) |",
        "| LLMI3D (default), each candidate named by the object it boxes (upper bound of naming) |",
        "| mean box |",
        "| back-projection of the true 2D box |",
    ):
        assert re.search(re.escape(row) + r"( [\d.-]+ \|){5}", smoke_markdown), row
    assert re.search(r"\| captions \(n=\d+\) \| LLMI3D \(default\) \|", smoke_markdown)
    assert re.search(r"\| eq\. 20 as written: tight 2D box height \+ mean of the depths \| [\d.]+",
                     smoke_markdown)  # fmt: skip
    assert "| no height depth (virtual depth only) |" in smoke_markdown
    assert "**Stand-in at size `smoke`**" in smoke_markdown
    assert re.search(r"- Upper bound of naming \(.*\): grounding [\d.]+ %", smoke_markdown)
    assert "paper: LLMI3D beats 2D grounding + back-projection" in smoke_markdown
    assert re.search(r"\*\*(agrees|disagrees|tie)\*\*", smoke_markdown)
    assert "Table XIII: rotation representation" in smoke_markdown
    assert re.search(r"\| tiny_synth \| detector 2 x [1-4] \+ joint 2 x [1-4] \|", smoke_markdown)
    assert "not trained at size `smoke` (this size's time budget" in smoke_markdown
    assert re.search(r"\| repeated, same frame \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", smoke_markdown)
    assert re.search(r"Repeated / first: \*\*[\d.]+\*\*", smoke_markdown)
    assert re.search(r"\| first query on a new frame <= 593 ms \| [\d.]+ ms \|", smoke_markdown)
    assert re.search(r"\| first \| [\d.]+ \| [\d.]+ \| [+-]\d+% \|", smoke_markdown)
    for stage in ("detector", "joint"):
        pattern = rf"\| tiny_synth \| {stage} \| tiny \| \d+( \(\d+\))? x \d+ \| .* \| [\d.]+ \|"
        assert re.search(pattern, smoke_markdown), stage
    assert re.search(r"\| \d+ \| \d+ \| (\d+|n/a) \| \d+ \| \d+ \|", smoke_markdown)


def test_stage_budgets_of_the_size(smoke_dir: Path) -> None:
    """Each ladder model trained the size's steps per stage, batches within the smoke data."""
    from bench_sizes import SIZES

    size = SIZES["smoke"]
    payload = json.loads((smoke_dir / "results.json").read_text(encoding="utf-8"))
    rows = payload["results"]["accuracy"]["rows"]
    trained = [r for r in rows.values() if r.get("method") == "model"]
    assert {r["variant"] for r in trained} == {"llmi3d", "euler"}
    for row in trained:
        assert [s["kind"] for s in row["stages"]] == ["detector", "joint"]
        for stage in row["stages"]:
            assert stage["max_steps"] == size.ablation_stage_steps[stage["kind"]]
            assert 1 <= stage["batch_size"] <= size.stage_batch[stage["kind"]]


def test_readme_paragraph_from_the_new_layout(smoke_markdown: str) -> None:
    """readme_accuracy reads this layout; it refuses a stand-in unless told (tests only)."""
    from readme_accuracy import BEGIN, END, block

    with pytest.raises(ValueError, match="stand-in"):
        block(smoke_markdown)
    text = block(smoke_markdown, allow_standin=True)
    assert text.startswith(BEGIN) and text.endswith(END)
    flat = " ".join(line.strip() for line in text.splitlines())
    assert re.search(r"\*\*Acc@0\.25 [\d.]+ %\*\* and grounding [\d.]+ %", flat)
    assert re.search(r"\d+ queries on 6 synthetic images", flat)
    assert re.search(r"its heads reach Acc@0\.25 [\d.]+ % \(the upper bound of pointing", flat)


def test_the_cached_default_model_is_reused(
    smoke_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """size.default_model "cached": the demo's finished run is evaluated as it is, not retrained.

    The cache (a user cache of this test's own) holds a finished run of the default recipe
    whose checkpoint is the smoke run's tiny model: `ensure_default_model` must return it at
    once, and the table must say it was reused and when and how long it trained.
    """
    import dataclasses

    import torch
    import yaml
    from bench_accuracy import measure_default, render_accuracy
    from bench_sizes import SIZES
    from readme_accuracy import block

    from llmi3d_core.default_model import default_model_dir, default_recipe
    from llmi3d_core.train_config import config_to_dict, load_train_config

    monkeypatch.setenv("LLMI3D_CACHE_DIR", str(tmp_path / "cache"))
    run = default_model_dir()
    shutil.copytree(smoke_dir / "work" / "accuracy" / "runs" / "tiny_llmi3d", run, symlinks=True)
    config = load_train_config(
        default_recipe(), [f"out_dir={run}", f"data.root={run / 'data' / 'smol_synth'}"]
    )  # what ensure_trained resumes: the same config, so it finds the run finished
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    (run / "done.json").touch()  # the run ended after it started

    size = dataclasses.replace(
        SIZES["smoke"], default_model="cached", default_eval_images=2, decoding_images=1
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the benchmark does: more threads only wait on a busy CPU
    try:
        default = measure_default(size, ladder_row=None)
    finally:
        torch.set_num_threads(threads)
    assert default["model"]["source"] == "cached"
    assert default["model"]["train_s"] is None and default["model"]["first_run"]["seconds"] >= 0
    assert default["rows"]["default/llmi3d"]["subsets"]["all"]["count"] > 0

    payload = json.loads((smoke_dir / "results.json").read_text(encoding="utf-8"))
    result = payload["results"]["accuracy"]
    result["rows"].update(default.pop("rows"))
    result["default"] = default
    markdown = "\n".join(render_accuracy(result, size))
    assert "reused from the demo's cache" in markdown
    header = "Generated by `python benchmarks/run_benchmarks.py` on 2026-12-01 00:00 UTC; x. "
    flat = " ".join(block(header + "Size `reduced`.\n" + markdown).split())
    assert (
        "recipe `smol_synth`, stages detector 600 x 32 + crops 1200 x 256 + pointer 400 x 32 "
        "steps x batch"
    ) in flat
    assert re.search(r"Training it on the demo's first run took [\d.]+ min there\.", flat)


def test_every_size_builds_its_configs(tmp_path: Path) -> None:
    """Each size's ladder configs (all variants, its family, planned stages) are valid."""
    from bench_accuracy import VARIANTS, build_config
    from bench_sizes import SIZES

    for size in SIZES.values():
        for variant in VARIANTS.values():
            config = build_config(size, size.ablation_family, variant, tmp_path)
            if config.method != "model":
                continue
            assert config.stages, (size.name, variant.key)
            for stage in config.stages:
                wanted = size.ablation_stage_steps.get(stage.kind)
                assert wanted is None or stage.max_steps == wanted
                assert stage.batch_size >= 1


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
    from run_benchmarks import splice

    fresh = BASE_MARKDOWN.replace("old soak text", "_Opt-in (about 30 minutes): ..._").replace(
        "- Soak (30 min, smol, camera 10 Hz, a query a second): **7 errors**, old figures\n", ""
    )
    kept = splice(fresh, BASE_MARKDOWN, ["soak"])
    assert kept == BASE_MARKDOWN
    # and the other way round: a placeholder never replaces a measured section
    assert splice(BASE_MARKDOWN, fresh, ["soak"]) == BASE_MARKDOWN


# --------------------------------------------------------------------------------------------
# --gpu-run: a run of the GPU recipe evaluated beside the default model
# --------------------------------------------------------------------------------------------


def test_gpu_run_info_times_each_stage_from_its_own_log(tmp_path: Path) -> None:
    """Each stage's time is its own log's span (stages may run on different machines), its
    batch the run's where the stage sets none; the checkpoint is the run's `best`."""
    from bench_accuracy import gpu_run_info

    config = {
        "name": "smol_synth_gpu",
        "batch_size": 32,
        "data": {"synth": {"num_images": 16000}},
        "stages": [
            {"kind": "detector", "max_steps": 2100, "batch_size": 64},
            {"kind": "pointer", "max_steps": 400, "batch_size": 0},
        ],
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config), encoding="utf-8")
    for index, (kind, times) in enumerate(
        [("detector", [100.0, 250.0, 411.5]), ("pointer", [5000.0, 5090.0])], start=1
    ):
        stage = tmp_path / "stages" / f"{index}-{kind}"
        stage.mkdir(parents=True)
        lines = [json.dumps({"event": "train", "step": i, "time": t}) for i, t in enumerate(times)]
        (stage / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    best = tmp_path / "stages" / "2-pointer" / "checkpoints" / "best-000400"
    best.mkdir(parents=True)
    (tmp_path / "best").symlink_to(best)
    info = gpu_run_info(tmp_path)
    assert info["recipe"] == "smol_synth_gpu" and info["images"] == 16000
    assert info["checkpoint"] == str(best.resolve())
    assert [(s["kind"], s["batch_size"], s["train_s"]) for s in info["stages"]] == [
        ("detector", 64, 311.5),
        ("pointer", 32, 90.0),
    ]


def test_gpu_rows_render_beside_the_default(smoke_dir: Path) -> None:
    """With a GPU run's rows, the table, the per-type table and the headline carry them; its
    upper-bound row is single-target only (n/a), like the default's; the claim is verdicted."""
    from bench_accuracy import DEFAULT_ROWS, default_lines, headline
    from bench_sizes import SIZES

    accuracy = json.loads((smoke_dir / "results.json").read_text(encoding="utf-8"))["results"][
        "accuracy"
    ]
    rows = accuracy["rows"]
    rows["default/gpu"] = {**rows["default/llmi3d"], "label": "GPU ROW"}
    rows["default/gpu_true_cells"] = {**rows["default/true_cells"], "label": "GPU UPPER"}
    accuracy["default"]["gpu_model"] = {
        "recipe": "smol_synth_gpu",
        "images": 16000,
        "checkpoint": "runs/x/best",
        "stages": [{"kind": "detector", "max_steps": 2100, "batch_size": 64, "train_s": 294.0}],
    }
    text = "\n".join(default_lines(accuracy, SIZES["smoke"]))
    gpu_row = next(line for line in text.splitlines() if line.startswith("| GPU ROW |"))
    upper = next(line for line in text.splitlines() if line.startswith("| GPU UPPER |"))
    assert gpu_row.split("|")[7].strip() != "n/a" and upper.split("|")[7].strip() == "n/a"
    assert f"| {DEFAULT_ROWS['gpu']} |" in text.split("Per query type:")[1]
    assert "detector 2100 x 64 in 4.9 min" in text and "`runs/x/best`" in text
    assert "GPU recipe's fine-tuned detector places boxes better" in text
    assert any(line.startswith("- GPU recipe `smol_synth_gpu`") for line in headline(accuracy))


def test_gpu_run_without_a_finished_run_is_rejected(tmp_path: Path) -> None:
    """--gpu-run names a directory without `best`: a usage error before any work."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--gpu-run", str(tmp_path), "--out", str(tmp_path / "B.md")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "holds no finished run" in proc.stderr
    assert not (tmp_path / "B.md").exists()
