"""`llmi3d eval` options: every one has help; --threads is applied and logged (issue 15, item 5)."""

import argparse
import subprocess
import sys

import pytest

from llmi3d_core.evaluate import add_arguments


def test_every_eval_option_has_help() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    missing = [a.dest for a in parser._actions if a.dest != "help" and not a.help]
    assert not missing
    text = " ".join(parser.format_help().split())
    assert "mono3dvg: Mono3DVG's axis-aligned, yaw-blind 3D IoU" in text
    assert "float16 with --device cuda" in text and "bfloat16 (faster on a CPU" in text


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("data") / "synth"
    generate_dataset(SynthConfig(num_images=8, seed=3), root, progress=False)
    return root


def eval_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "llmi3d_core.cli", "eval", "--baseline", "mean-box", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_eval_threads_are_set_and_logged(synth, tmp_path) -> None:
    done = eval_cli("--data", str(synth), "--split", "train", "--gallery", "0",
                    "--out", str(tmp_path / "out"), "--threads", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "llmi3d eval: torch uses 1 CPU thread(s) (--threads);" in done.stderr


def test_eval_rejects_negative_threads(synth, tmp_path) -> None:
    done = eval_cli("--data", str(synth), "--threads", "-1", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "--threads must be >= 0 (0: torch's default), got -1" in done.stderr


def _rule(*argv: str, fitted: float | None = None):
    from llmi3d_core.evaluate import answer_rule

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--baseline", "mean-box", "--data", "d", *argv])
    return answer_rule(args, fitted)


def test_eval_answer_rule_defaults_to_the_node_and_answer_all_to_zeros() -> None:
    from llmi3d_core.errors import InvalidInputError
    from llmi3d_core.prediction import AnswerRule

    assert _rule() == AnswerRule.SERVED
    assert _rule("--answer-all") == AnswerRule()
    assert _rule("--min-ratio-to-nothing", "0") == AnswerRule(
        AnswerRule.SERVED.min_score, 0.0, AnswerRule.SERVED.min_score_others
    )
    with pytest.raises(InvalidInputError, match=r"drop --min-score$"):
        _rule("--answer-all", "--min-score", "0.3")
    with pytest.raises(InvalidInputError, match="min_ratio_to_nothing must be a number"):
        _rule("--min-ratio-to-nothing", "-2")
    # a model with a ratio of its own is evaluated with it, as the node serves it
    assert _rule(fitted=0.8) == AnswerRule.served(0.8) != AnswerRule.SERVED
    assert _rule("--min-ratio-to-nothing", "0.5", fitted=0.8).min_ratio_to_nothing == 0.5
    assert _rule("--answer-all", fitted=0.8) == AnswerRule()
    with pytest.raises(InvalidInputError, match=r"drop --min-ratio-to-nothing$"):
        _rule("--answer-all", "--min-ratio-to-nothing", "0.65")


def test_eval_rejects_an_answer_rule_out_of_range(synth, tmp_path) -> None:
    done = eval_cli("--data", str(synth), "--min-score", "1.5", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "min_score must be a number in [0, 1], got 1.5" in done.stderr
