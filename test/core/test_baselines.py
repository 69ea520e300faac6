"""Non-learned baselines (mean box, 2D centre + back-projection) and their evaluation table."""

import json
import subprocess
import sys

import numpy as np
import pytest

from llmi3d_core import geometry, rotation
from llmi3d_core.baselines import (
    BackprojectBaseline,
    MeanBoxBaseline,
    fit_baseline,
    load_baseline,
    mean_rotation,
    normalize_baseline_name,
    save_baseline,
)
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.splits import select_queries
from llmi3d_core.errors import CheckpointError, InvalidInputError
from llmi3d_core.eval_predict import predict_with_baseline
from llmi3d_core.eval_report import evaluate_results, markdown_table, query_subsets


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small IG3D-Synth dataset written by the generator."""
    from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("data") / "synth"
    generate_dataset(SynthConfig(num_images=24, seed=3), root, progress=False)
    return read_dataset(root)


def test_mean_rotation_of_yaws():
    """The chordal mean of rotations about one axis is the rotation by the mean angle."""
    angles = [-0.3, 0.1, 0.5]
    Rs = rotation.euler_to_matrix(np.array([[0.0, a, 0.0] for a in angles]))
    expected = rotation.euler_to_matrix(np.array([0.0, 0.1, 0.0]))
    np.testing.assert_allclose(mean_rotation(Rs), expected, atol=1e-9)
    assert np.linalg.det(mean_rotation(-np.eye(3)[None])) == pytest.approx(1.0)


def test_mean_box_is_the_training_mean(synth):
    """The mean box averages the training targets and ignores the query."""
    train = select_queries(synth, "train")
    baseline = MeanBoxBaseline.fit(synth, train)
    centers = np.array([synth.target(q).center_cam for q in train])
    np.testing.assert_allclose(baseline.center, centers.mean(axis=0))
    test = select_queries(synth, "test")
    boxes = {tuple(baseline.predict(synth, q)[0].center) for q in test}
    assert len(boxes) == 1


def test_backproject_recovers_a_perfect_prior(synth):
    """With the true depth, the projected-box centre and true size, the box is near the truth."""
    train = select_queries(synth, "train")
    baseline = BackprojectBaseline.fit(synth, train, box2d="proj")
    query = train[0]
    target = synth.target(query)
    prior = baseline.categories[target.category_name]
    prior.depth_m = float(target.center_cam[2])
    box, label = baseline.predict(synth, query)
    assert label == target.category_name
    assert box.center[2] == pytest.approx(target.center_cam[2])
    x1, y1, x2, y2 = target.bbox2D_proj
    u, v = geometry.project(box.center, synth.image(query.image_id).K)
    assert (u, v) == pytest.approx(((x1 + x2) / 2, (y1 + y2) / 2))


def test_novel_categories_use_the_fallback(synth):
    """A category never seen in training gets the all-targets prior."""
    train = [q for q in select_queries(synth, "train") if synth.target(q).category_name != "x"]
    baseline = BackprojectBaseline.fit(synth, train)
    novel = [q for q in synth.queries if synth.target(q).category_name not in baseline.categories]
    for query in novel[:3]:
        box, _ = baseline.predict(synth, query)
        np.testing.assert_allclose(box.dims_lwh, baseline.fallback.dims_lwh)


@pytest.mark.parametrize("name", ["mean-box", "backproject"])
def test_save_load_round_trip(synth, tmp_path, name):
    """A saved baseline predicts the same boxes after loading."""
    baseline = fit_baseline(name, synth, select_queries(synth, "train"), depth="height")
    save_baseline(baseline, tmp_path)
    loaded = load_baseline(tmp_path)
    query = select_queries(synth, "test")[0]
    np.testing.assert_allclose(
        baseline.predict(synth, query)[0].corners(), loaded.predict(synth, query)[0].corners()
    )


def test_baseline_errors(synth, tmp_path):
    """Unknown names, empty fitting sets and broken files raise clear errors."""
    with pytest.raises(InvalidInputError, match="unknown baseline 'oracle'; available: mean-box"):
        normalize_baseline_name("oracle")
    with pytest.raises(InvalidInputError, match="the fitting split has no queries"):
        MeanBoxBaseline.fit(synth, [])
    with pytest.raises(InvalidInputError, match="backproject options"):
        BackprojectBaseline.fit(synth, synth.queries, depth="lidar")
    with pytest.raises(CheckpointError, match="not found"):
        load_baseline(tmp_path)
    (tmp_path / "baseline.json").write_text('{"method": "nope"}')
    with pytest.raises(CheckpointError, match="not a valid baseline file"):
        load_baseline(tmp_path)


def test_table_subsets_and_ordering(synth):
    """The table has the whole split, query types and the novel / camera subsets."""
    test = select_queries(synth, "test") + select_queries(synth, "val")
    baseline = fit_baseline("backproject", synth, select_queries(synth, "train"))
    results = predict_with_baseline(baseline, synth, test)
    subsets = query_subsets(results, synth)
    assert next(iter(subsets)) == "all"
    assert len(subsets["all"]) == len(test)
    for kind in {q.type for q in test}:
        assert kind.replace("_", " ") in subsets
    report = evaluate_results(results, synth, iou="mono3dvg")
    table = markdown_table(report, "backproject")
    assert "| all |" in table and "IoU: mono3dvg" in table
    with pytest.raises(InvalidInputError, match="unknown iou variant"):
        evaluate_results(results, synth, iou="bev")
    with pytest.raises(InvalidInputError, match="no queries to evaluate"):
        evaluate_results([], synth)


def test_eval_cli_baselines(synth, tmp_path):
    """`llmi3d eval --baseline` prints the table and writes report, predictions and gallery."""
    reports = {}
    for name in ("mean-box", "backproject"):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "llmi3d_core.cli", "eval", "--baseline", name]
        cmd += ["--data", str(synth.root), "--split", "test", "--out", str(out), "--gallery", "3"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
        assert "| subset | n | Acc@0.25" in done.stdout
        assert "IoU: exact" in done.stdout
        assert len(list((out / "gallery").glob("*.png"))) == 3
        reports[name] = json.loads((out / "report.json").read_text())
        lines = (out / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == reports[name]["subsets"]["all"]["count"]
    # the oracle 2D box + category priors beat a constant box
    mean_iou = {k: r["subsets"]["all"]["mean_iou"] for k, r in reports.items()}
    assert mean_iou["backproject"] > mean_iou["mean-box"]
    bad = subprocess.run(
        [sys.executable, "-m", "llmi3d_core.cli", "eval", "--baseline", "nope", "--data",
         str(synth.root)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown baseline 'nope'" in bad.stderr
