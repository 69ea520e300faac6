"""The benchmark's "trained without negative queries" row: its data and its training run.

Issue 14 asks what adding negative queries costs the positive ones; section 1 of BENCHMARKS.md
answers it with the default recipe's pointer stage trained again without them
(bench_accuracy.train_without_negatives). Here on a tiny staged run of the same shape.
"""

import shutil
from pathlib import Path

import pytest
import yaml
from bench_accuracy import (  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
    negatives_cost,
    negatives_cost_lines,
    train_without_negatives,
    without_negatives,
)

from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.train import train
from llmi3d_core.train_config import config_from_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images with negative queries in every split."""
    root = tmp_path_factory.mktemp("negatives") / "data"
    queries = QueryConfig(negatives_per_image=1, multi_target_per_image=1)
    config = SynthConfig(num_images=16, seed=5, split_fractions=(0.6, 0.4, 0.0), queries=queries)
    return generate_dataset(config, root, progress=False)


def kinds_by_split(root: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for query in read_dataset(root, check_files=True).queries:
        n = len(query.target_object_ids)
        kind = "negative" if n == 0 else "single" if n == 1 else "multi"
        split = counts.setdefault(query.split, {"negative": 0, "single": 0, "multi": 0})
        split[kind] += 1
    return counts


def test_only_the_training_negatives_go(data_root: Path, tmp_path: Path) -> None:
    before = kinds_by_split(data_root)
    assert before["train"]["negative"] > 0 and before["val"]["negative"] > 0
    copy = without_negatives(data_root, tmp_path / "copy", "train@source")
    after = kinds_by_split(copy)
    assert after["train"] == {**before["train"], "negative": 0}
    assert after["val"] == before["val"]
    assert (copy / "images").resolve() == (data_root / "images").resolve()

    # made again from another dataset, the copy links that one's images
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    for name in ("dataset.json", "images.jsonl", "queries.jsonl"):
        shutil.copyfile(data_root / name, other / name)
    without_negatives(other, copy, "train")
    assert (copy / "images").resolve() == (other / "images").resolve()


def staged_config(data_root: Path, out: Path, kinds: list[str]) -> dict:
    return {
        "name": "tiny_staged",
        "method": "model",
        "out_dir": str(out),
        "seed": 1,
        "model": {"preset": "tiny", "answer_types": [],
                  "detector": {"crop_heads": True, "crop_size": 32}},
        "data": {"root": str(data_root), "val_queries": 8, "synth": None},
        "batch_size": 4,
        "stages": [{"kind": kind, "max_steps": 2} for kind in kinds],
        "threads": 1,
        "progress": False,
        "tensorboard": False,
    }  # fmt: skip


def test_the_pointer_stage_trains_again_without_negatives(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = staged_config(data_root, run, ["detector", "crops", "pointer"])
    spec["stages"][-1] |= {"hide_targets": 0.5, "not_here_rate": 0.85}
    train(config_from_dict(spec))

    checkpoint = train_without_negatives(run, tmp_path / "work")
    assert checkpoint is not None and (checkpoint / "model.safetensors").is_file()
    out = tmp_path / "work" / "no_negatives"
    config = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    pointer = config["stages"][-1]
    assert pointer["hide_targets"] == 0.0 and pointer["not_here_rate"] == 0.0
    assert kinds_by_split(Path(config["data"]["root"]))["train"]["negative"] == 0
    # the stages before the pointer are the default run's own, not trained again
    for name in ("1-detector", "2-crops"):
        assert (out / "stages" / name / "best").resolve() == (
            run / "stages" / name / "best"
        ).resolve()
    assert checkpoint.is_relative_to(out.resolve())

    # a second benchmark run trains it again from scratch
    assert train_without_negatives(run, tmp_path / "work") is not None


def test_no_row_for_a_run_without_a_final_pointer_stage(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config_from_dict(staged_config(data_root, run, ["detector", "crops"])))
    assert train_without_negatives(run, tmp_path / "work") is None


def test_the_cost_paragraph() -> None:
    def row(grounding: float) -> dict:
        return {"subsets": {"all": {"grounding_acc": grounding}}}

    rows = {"default/llmi3d": row(0.724), "default/llmi3d_best": row(0.791)}
    assert negatives_cost(rows) is None and negatives_cost_lines({}, rows) == []
    rows["default/no_negatives"] = row(0.776)
    cost = negatives_cost(rows)
    assert cost is not None
    assert cost["trained"] == pytest.approx(5.2) and cost["rule"] == pytest.approx(6.7)
    text = " ".join(negatives_cost_lines({"no_negatives_model": {"train_s": 240.0}}, rows))
    assert "grounds 77.6 % of the single-target queries" in text and "**5.2 points**" in text
    assert "(the answer rule alone): 6.7 points" in text and "4.0 min" in text

    failed = {"no_negatives_model": {"error": "Traceback ...\nRuntimeError: out of memory\n"}}
    text = " ".join(negatives_cost_lines(failed, {}))
    assert "**FAILED**: `RuntimeError: out of memory`" in text
