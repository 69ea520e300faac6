"""Training: the staged loop resumes exactly, tiny_synth learns, the eval CLI, errors.

Two kinds of runs:

* a small inline staged config (detector -> pointer -> joint, a few steps each, on a small
  synthetic set) for everything about the loop itself: exact resume after a stop or a SIGKILL in
  any stage, checkpoints, errors. It does not depend on any recipe's accuracy.
* config/train/tiny_synth.yaml, the CI smoke recipe, trained once on its own synthetic set (its
  data.synth section generates it, as on a fresh machine): its losses fall and it beats the mean
  box on held-out images.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from llmi3d_core.data.reader import read_dataset
from llmi3d_core.errors import ConfigError
from llmi3d_core.ground_plane import record_ground_plane
from llmi3d_core.rundir import point_link, write_dir_atomically
from llmi3d_core.train import ensure_trained, train
from llmi3d_core.train_config import load_train_config
from llmi3d_core.train_data import StepBatchSampler, prepare_data

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "config" / "train" / "tiny_synth.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

# trains the tiny model (~3 min of CPU for the whole file on an idle 2-core machine)
pytestmark = pytest.mark.slow

# A small staged run: every stage kind, 2 micro-batches a step, checkpoints every 2 steps and
# validation every 3, so that stops and kills land mid-stage, on and off checkpoint steps.
SMALL = {
    "name": "small_staged",
    "method": "model",
    "seed": 3,
    "model": {
        "preset": "tiny",
        "answer_types": [],
        "detector": {"crop_heads": True, "crop_size": 32},
    },
    "data": {
        "val_queries": 8,
        "cache_items": True,
        "synth": {
            "num_images": 20,
            "seed": 4,
            "options": {"camera_groups": ["vga_normal"], "split_fractions": [0.7, 0.3, 0.0]},
        },
    },
    "batch_size": 4,
    "grad_accum": 2,
    "stages": [
        {"kind": "detector", "max_steps": 4},
        {"kind": "crops", "max_steps": 4, "batch_size": 8},
        {"kind": "pointer", "max_steps": 4, "lr": 1.0e-3},
        {"kind": "joint", "max_steps": 6},
    ],
    "checkpoint_interval": 2,
    "eval_interval": 3,
    "best_metric": "val_acc25",
    "threads": 1,
    "progress": False,
    "tensorboard": False,
    "optim": {"lr": 2.0e-3, "min_lr": 2.0e-4, "warmup_steps": 2},
}
STAGE_DIRS = ("1-detector", "2-crops", "3-pointer", "4-joint")
STEPS = {"1-detector": 4, "2-crops": 4, "3-pointer": 4, "4-joint": 6}


def cli(*args, check=True, timeout=240):
    """Run `python -m llmi3d_core.cli ...` in the repository."""
    return subprocess.run(
        [sys.executable, "-m", "llmi3d_core.cli", *map(str, args)],
        capture_output=True, text=True, check=check, timeout=timeout, cwd=REPO, env=ENV,
    )  # fmt: skip


@pytest.fixture(scope="module")
def small_config_file(tmp_path_factory):
    """The small staged config as a YAML file, and its generated dataset."""
    directory = tmp_path_factory.mktemp("small")
    path = directory / "small_staged.yaml"
    data = {**SMALL, "data": {**SMALL["data"], "root": str(directory / "data")}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    prepare_data(load_train_config(path), progress=False)
    return path


def small(path, out_dir, *extra):
    """The small staged config with out_dir and overrides."""
    return load_train_config(path, [f"out_dir={out_dir}", *extra])


@pytest.fixture(scope="module")
def small_run(small_config_file, tmp_path_factory):
    """A finished small staged run (the uninterrupted reference)."""
    out = tmp_path_factory.mktemp("small_run") / "run"
    config = small(small_config_file, out)
    best = train(config)
    return {"config": config, "best": best, "out": out}


def log_lines(run_dir, event="train"):
    lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["event"] == event]


def stage_weights(out_dir, stage):
    latest = (Path(out_dir) / "stages" / stage / "latest").resolve()
    assert latest.name == f"step-{STEPS[stage]:06d}", latest
    return load_file(str(latest / "model.safetensors"))


def assert_same_run(a, b):
    """Two staged runs ended with the same weights and logged the same losses, stage by stage."""
    for stage in STAGE_DIRS:
        wa, wb = stage_weights(a, stage), stage_weights(b, stage)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (stage, key)
        for event, key in (("train", "loss"), ("eval", "val/loss")):
            rows = [log_lines(Path(d) / "stages" / stage, event) for d in (a, b)]
            assert [(r["step"], r[key]) for r in rows[0]] == [(r["step"], r[key]) for r in rows[1]]


def test_staged_run_layout(small_run):
    """Each stage has its directory, log and checkpoints; out_dir points at the last stage."""
    out = small_run["out"]
    for stage in STAGE_DIRS:
        directory = out / "stages" / stage
        assert (directory / "done.json").exists() and (directory / "best").is_symlink()
        rows = log_lines(directory)
        assert [r["step"] for r in rows] == list(range(1, STEPS[stage] + 1))
        assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in rows)
        assert log_lines(directory, "eval"), stage
    # the pointer stage trains the pointer alone, on cached LLM states: its scores, residual,
    # and the category, colour, spatial relation and anchors the query's words name
    pointer_rows = log_lines(out / "stages" / "3-pointer")
    assert {k for k in pointer_rows[0] if k.startswith("loss/")} == {
        "loss/pointer", "loss/residual", "loss/text_category", "loss/text_color",
        "loss/text_relation", "loss/text_anchor",
    }  # fmt: skip
    # its validation fits the score calibration (stored in the checkpoint)
    pointer_eval = log_lines(out / "stages" / "3-pointer", "eval")[-1]
    assert pointer_eval["val/temperature"] > 0 and np.isfinite(pointer_eval["val/score_bias"])
    detector_rows = log_lines(out / "stages" / "1-detector")
    assert "loss/heatmap" in detector_rows[0] and "loss/text" not in detector_rows[0]
    assert small_run["best"] == (out / "best").resolve()
    assert (out / "best").resolve().parent.parent == out / "stages" / "4-joint"
    done = json.loads((out / "done.json").read_text())
    assert done["stages"] == list(STAGE_DIRS) and done["best_metric"] == "val_acc25"
    # each stage starts from the best checkpoint of the one before, and trains only its part:
    # the pointer stage keeps the detector stage's dense heads and changes the pointer
    best = {stage: load_file(str(out / "stages" / stage / "best" / "model.safetensors"))
            for stage in STAGE_DIRS}  # fmt: skip
    heads, pointer = "dense_heads.outputs.heatmap.weight", "pointer.key.weight"
    assert torch.equal(best["1-detector"][heads], best["3-pointer"][heads])
    assert not torch.equal(best["1-detector"][pointer], best["3-pointer"][pointer])
    # the crops stage trains the crop heads alone and marks them fitted, which the pointer
    # stage keeps (its candidates are then named and their 2D boxes corrected from crops)
    crops = "crop_heads.category.1.weight"
    assert not torch.equal(best["1-detector"][crops], best["2-crops"][crops])
    assert torch.equal(best["1-detector"][heads], best["2-crops"][heads])
    assert torch.equal(best["2-crops"][crops], best["3-pointer"][crops])
    fitted = [bool(best[stage]["crop_heads.fitted"]) for stage in STAGE_DIRS]
    assert fitted == [False, True, True, True]
    crop_rows = log_lines(out / "stages" / "2-crops")
    assert {k for k in crop_rows[0] if k.startswith("loss/")} == {
        "loss/category", "loss/color", "loss/box"
    }  # fmt: skip
    # the crops stage keeps the step whose heads err least (val/error), not the lowest loss
    evals = log_lines(out / "stages" / "2-crops", "eval")
    for row in evals:
        rates = [row[f"val/{k}"] for k in ("box_match", "category_acc", "color_acc")]
        assert row["val/error"] == pytest.approx(1.0 - sum(rates) / 3)
    least = min(evals, key=lambda row: (row["val/error"], row["val/loss"]))
    best_dir = (out / "stages" / "2-crops" / "best").resolve()
    assert best_dir.name == f"best-{least['step']:06d}"
    crops_done = json.loads((out / "stages" / "2-crops" / "done.json").read_text())
    assert crops_done["best_key"] == "val/error"
    assert crops_done["best_value"] == pytest.approx(least["val/error"])
    assert torch.equal(
        best["1-detector"]["llm.new_embeddings"], best["3-pointer"]["llm.new_embeddings"]
    )


def test_resume_after_stops_matches_uninterrupted(small_config_file, small_run, tmp_path):
    """Stopped every 3 steps (max_steps_this_run) in every stage and resumed: the same run."""
    parts = tmp_path / "parts"
    train(small(small_config_file, parts, "max_steps_this_run=3"))
    assert not (parts / "done.json").exists()
    latest = parts / "stages" / "1-detector" / "latest"
    assert latest.resolve().name == "step-000003"
    for _ in range(10):
        if (parts / "done.json").exists():
            break
        train(small(small_config_file, parts, "max_steps_this_run=3"), resume=True)
    assert (parts / "done.json").exists()
    assert_same_run(small_run["out"], parts)
    # ensure_trained returns a finished run at once
    overrides = [f"data.root={small_run['config'].data.root}"]
    assert ensure_trained(small_config_file, parts, overrides) == (parts / "best").resolve()


@pytest.mark.parametrize("stage", ["1-detector", "3-pointer", "4-joint"])
def test_resume_after_sigkill_matches_uninterrupted(small_config_file, small_run, tmp_path, stage):
    """A real SIGKILL in a stage (maybe mid-checkpoint), then `--resume`: the same run."""
    killed = tmp_path / "killed"
    args = ["--config", small_config_file, f"out_dir={killed}", "checkpoint_interval=1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "llmi3d_core.cli", "train", *map(str, args)],
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    target = killed / "stages" / stage / "checkpoints"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if target.is_dir() and any(target.glob("step-00000[2-9]")):
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert (killed / "stages" / stage / "latest").exists(), "no checkpoint before the kill"
    assert not (killed / "done.json").exists()
    cli("train", *args, "--resume")
    assert (killed / "done.json").exists()
    assert_same_run(small_run["out"], killed)
    assert not list(killed.rglob(".tmp-*"))  # what the kill left half-written is gone


def test_sampler_order_is_resumable():
    """Starting the sampler at batch b continues the uninterrupted sequence; ranks are disjoint."""
    full = iter(StepBatchSampler(10, 3, seed=5))
    sequence = [next(full) for _ in range(7)]
    resumed = iter(StepBatchSampler(10, 3, seed=5, start_batch=4))
    assert [next(resumed) for _ in range(3)] == sequence[4:]
    first_epoch = [i for batch in sequence[:3] for i in batch]
    assert len(set(first_epoch)) == 9  # an epoch visits each sample at most once
    ranks = [next(iter(StepBatchSampler(10, 2, seed=1, rank=r, world=2))) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        StepBatchSampler(3, 2, seed=0, world=2)


def test_atomic_directory_and_link(tmp_path):
    """A failing write leaves the previous checkpoint and link untouched."""
    first = write_dir_atomically(tmp_path / "ck-1", lambda d: (d / "w").write_text("1"))
    point_link(tmp_path / "latest", first)

    def crash(directory):
        (directory / "w").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dir_atomically(tmp_path / "ck-2", crash)
    assert not (tmp_path / "ck-2").exists()
    assert (tmp_path / "latest" / "w").read_text() == "1"
    second = write_dir_atomically(tmp_path / "ck-2", lambda d: (d / "w").write_text("2"))
    point_link(tmp_path / "latest", second)
    assert (tmp_path / "latest" / "w").read_text() == "2"


def test_single_joint_stage_uses_out_dir_itself(small_config_file, tmp_path):
    """A config without stages is one joint stage in out_dir, as before staged runs."""
    out = tmp_path / "joint"
    config = small(
        small_config_file, out, "stages=[]", "max_steps=2", "eval_interval=0",
        "model.detector.crop_heads=false",  # only a crops stage fits them (check_crop_stage)
    )  # fmt: skip
    train(config)
    assert (out / "done.json").exists() and not (out / "stages").exists()
    assert [r["step"] for r in log_lines(out)] == [1, 2]
    assert "loss/pointer" in log_lines(out)[0] and "loss/heatmap" in log_lines(out)[0]


# ------------------------------------------------------------------------------------------
# baselines through `llmi3d train`, errors
# ------------------------------------------------------------------------------------------


def test_baseline_config_trains_and_evaluates(small_run, tmp_path):
    """method=mean_box fits in one step; its `best` evaluates like a model checkpoint."""
    config = REPO / "config" / "train" / "baseline_mean_box.yaml"
    data = small_run["config"].data.root
    out = tmp_path / "mean_box"
    cli("train", "--config", config, f"out_dir={out}", f"data.root={data}")
    assert (out / "best" / "baseline.json").exists()
    done = cli("eval", "--checkpoint", out / "best", "--data", data,
               "--split", "val", "--gallery", "1", "--out", tmp_path / "eval")  # fmt: skip
    assert "**mean_box on" in done.stdout


def test_train_errors(small_config_file, small_run, tmp_path):
    """Existing runs, changed configs and missing data are refused with clear messages."""
    config = small_run["config"]
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(config)
    changed = small(small_config_file, config.out_dir, "optim.lr=0.5")
    with pytest.raises(ConfigError, match=r"differs from this config in \['optim.lr'\]"):
        train(changed, resume=True)
    missing = small(
        small_config_file, tmp_path / "x", f"data.root={tmp_path / 'none'}", "data.synth=null"
    )
    with pytest.raises(ConfigError, match="holds no dataset"):
        train(missing)
    with pytest.raises(ConfigError, match=r"stages\[\].kind 'warmup' is unknown"):
        small(small_config_file, tmp_path / "y", "stages=[{kind: warmup}]")
    done = cli("train", "--config", small_config_file, "nosuch=1", check=False)
    assert done.returncode == 2 and "Unknown config key: nosuch" in done.stderr
    assert len(read_dataset(config.data.root).queries) > 0


# ------------------------------------------------------------------------------------------
# the CI smoke recipe
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny_synth run, on its data generated from the config's data.synth section."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    config = load_train_config(TINY, [f"out_dir={out}", f"data.root={root}", "progress=false"])
    started = time.perf_counter()
    best = train(config)
    return {"config": config, "best": best, "seconds": time.perf_counter() - started}


def test_tiny_synth_losses_fall(tiny_run):
    """In every stage, the training loss of the last 20 % of steps is below the first 10 %'s."""
    run_dir = Path(tiny_run["config"].out_dir)
    for index, stage in enumerate(tiny_run["config"].stages, start=1):
        rows = log_lines(run_dir / "stages" / f"{index}-{stage.kind}")
        assert len(rows) == stage.max_steps
        losses = np.array([r["loss"] for r in rows])
        first, last = losses[: max(1, len(losses) // 10)].mean(), losses[-len(losses) // 5 :].mean()
        assert last < first - 0.2 * abs(first), (stage.kind, first, last)
    assert (run_dir / "done.json").exists() and (run_dir / "best").is_symlink()
    assert tiny_run["best"] == (run_dir / "best").resolve()


def bearing_error_deg(predictions: Path) -> float:
    """Mean angle (degrees) between the predicted and true rays to the box centre.

    The direction of the centre is where the object is in the image; the mean box always points
    the same way, so it measures 2D localisation apart from depth.
    """
    angles = []
    for line in predictions.read_text().splitlines():
        row = json.loads(line)
        if row["gt"] is None:
            continue  # a negative or multi-target query
        assert row["pred"] is not None, row  # with --answer-all every query has an answer
        pred, gt = np.array(row["pred"]["center"]), np.array(row["gt"]["center"])
        cosine = pred @ gt / (np.linalg.norm(pred) * np.linalg.norm(gt))
        angles.append(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    return float(np.mean(angles))


def test_tiny_synth_beats_mean_box_on_held_out_images(tiny_run, tmp_path):
    """`llmi3d eval` of the best checkpoint against the mean box, on the test images.

    At the CI budget the tiny model finds the object (the direction of its centre), and its
    depth and size, with errors well below the mean box's, and scores Acc@0.25 above it. The
    model is read with --answer-all (its best box for every query, like the mean box): the
    recipe has no pointer stage, so its scores are not calibrated.
    """
    config = tiny_run["config"]
    reports = {}
    for name, source in (("model", ["--checkpoint", tiny_run["best"], "--answer-all"]),
                         ("mean_box", ["--baseline", "mean-box"])):  # fmt: skip
        out = tmp_path / name
        done = cli("eval", *source, "--data", config.data.root, "--split", "test", "--out", out,
                   "--gallery", "4", "--no-progress")  # fmt: skip
        assert "| all |" in done.stdout and "IoU: exact" in done.stdout
        reports[name] = json.loads((out / "report.json").read_text())["subsets"]["all"]
    model, mean_box = reports["model"], reports["mean_box"]
    bearing = {name: bearing_error_deg(tmp_path / name / "predictions.jsonl") for name in reports}
    assert bearing["model"] < 0.5 * bearing["mean_box"], bearing
    assert model["depth_mae"] < 0.7 * mean_box["depth_mae"], (model, mean_box)
    size = [f"{k}_mae" for k in ("length", "width", "height")]
    assert sum(model[k] for k in size) < 0.9 * sum(mean_box[k] for k in size), (model, mean_box)
    assert model["acc@0.25"] > 2 * mean_box["acc@0.25"] + 0.02, (model, mean_box)
    gallery = sorted((tmp_path / "model" / "gallery").glob("*.png"))
    assert len(gallery) == 4


def test_eval_with_the_ground_plane_stands_the_answers_on_each_images_floor(tiny_run, tmp_path):
    """`llmi3d eval --ground-plane`: the same answers (the same objects, scores and 2D boxes),
    each 3D box moved along its ray onto the floor its image record gives, or left alone."""
    config = tiny_run["config"]
    rows = {}
    for name, extra in (("plain", []), ("floor", ["--ground-plane"])):
        out = tmp_path / name
        done = cli("eval", "--checkpoint", tiny_run["best"], "--answer-all", *extra, "--data",
                   config.data.root, "--split", "test", "--out", out, "--gallery", "0",
                   "--limit", "40", "--no-progress")  # fmt: skip
        assert "| all |" in done.stdout
        rows[name] = [json.loads(line) for line in (out / "predictions.jsonl").open()]
        report = json.loads((out / "report.json").read_text())
    assert report["source"]["name"].endswith("(camera's ground plane given)")
    dataset = read_dataset(Path(config.data.root))
    image_of = {q.query_id: q.image_id for q in dataset.queries}
    moved = 0
    for plain, floor in zip(rows["plain"], rows["floor"], strict=True):
        assert plain["query_id"] == floor["query_id"]
        assert len(plain["predictions"]) == len(floor["predictions"])
        plane = record_ground_plane(dataset.image(image_of[plain["query_id"]]).extra)
        for before, after in zip(plain["predictions"], floor["predictions"], strict=True):
            assert after["score"] == before["score"] and after["box2d"] == before["box2d"]
            if np.allclose(after["center"], before["center"]):
                continue
            moved += 1
            centre, height = np.asarray(after["center"]), after["dims_lwh"][2]
            # predictions.jsonl rounds to 4 decimals
            assert float(plane.down @ centre) + height / 2 == pytest.approx(
                plane.height_m, abs=2e-3
            )
    assert moved >= 5, moved
    done = cli("eval", "--baseline", "mean-box", "--ground-plane", "--data", config.data.root,
               "--out", tmp_path / "baseline", check=False)  # fmt: skip
    assert done.returncode != 0 and "--ground-plane" in done.stderr


def test_ensure_trained_returns_finished_run(tiny_run):
    """A finished run is returned as it is: no file of the run directory is written again."""
    config = tiny_run["config"]
    run_dir = Path(config.out_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    best = ensure_trained(TINY, config.out_dir, [f"data.root={config.data.root}"])
    assert best == tiny_run["best"]
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert after == before
