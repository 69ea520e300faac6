"""config/params.yaml and the node's parameter table agree."""

from __future__ import annotations

from dataclasses import fields

import yaml
from conftest import HERE

from llmi3d_core.inference import MAX_QUERY_CHARS
from llmi3d_core.prediction import MAX_RATIO_TO_NOTHING, AnswerRule
from llmi3d_ros.params import MODEL_RATIO, NodeParams, descriptor, effective_ratio, validate


def test_params_yaml_matches_node_defaults() -> None:
    """Every parameter has the same default in params.yaml and in NodeParams, and no extras."""
    data = yaml.safe_load((HERE.parents[1] / "config" / "params.yaml").read_text())
    ros_params = data["/**/llmi3d_node"]["ros__parameters"]
    defaults = {f.name: f.default for f in fields(NodeParams)}
    assert ros_params == defaults


def test_validate_names_the_parameter_and_the_choices() -> None:
    """A value outside the choices is refused with a reason naming both."""
    reason = validate("qos_reliability", "sometimes")
    assert reason is not None
    assert "qos_reliability" in reason and "best_effort" in reason
    assert validate("qos_reliability", "reliable") is None
    assert validate("use_sim_time", True) is None


def test_answer_rule_defaults_are_the_core_defaults_and_ranged() -> None:
    """The answer rule's defaults have one home (llmi3d_core.prediction.AnswerRule.SERVED), the
    ratio's is the model's own (negative); the descriptors allow what AnswerRule accepts: scores
    in [0, 1], the ratio in [0, 100] (and the negative "the model's")."""
    params = NodeParams()
    served = AnswerRule.SERVED
    assert (params.min_score, params.min_score_others) == (
        served.min_score, served.min_score_others
    )  # fmt: skip
    assert params.min_ratio_to_nothing == MODEL_RATIO < 0
    assert not hasattr(params, "score_threshold")
    for name, low, high in (
        ("min_score", 0.0, 1.0), ("min_ratio_to_nothing", MODEL_RATIO, MAX_RATIO_TO_NOTHING),
        ("min_score_others", 0.0, 1.0),
    ):  # fmt: skip
        [allowed] = descriptor(name).floating_point_range
        assert (allowed.from_value, allowed.to_value) == (low, high)
        AnswerRule(**{name: high})  # the core accepts both ends
        AnswerRule(**{name: 0.0})


def test_a_negative_ratio_takes_the_models_own() -> None:
    """min_ratio_to_nothing < 0 answers with the model's rule (fitted or the default); a given
    value wins; values a hair outside the range (rclpy allows 1e-6 relative) are clamped."""
    fitted = AnswerRule.served(0.8)
    assert effective_ratio(MODEL_RATIO, fitted) == 0.8
    assert effective_ratio(-0.5, AnswerRule.served(None)) == served_default()
    assert effective_ratio(0.3, fitted) == 0.3
    assert effective_ratio(0.0, fitted) == 0.0
    assert effective_ratio(MAX_RATIO_TO_NOTHING * (1 + 1e-7), fitted) == MAX_RATIO_TO_NOTHING


def served_default() -> float:
    return AnswerRule.SERVED.min_ratio_to_nothing


def test_max_query_chars_cannot_exceed_what_core_accepts() -> None:
    """The node's query-length limit comes from core (rclpy refuses values outside the range)."""
    assert NodeParams().max_query_chars == MAX_QUERY_CHARS
    [allowed] = descriptor("max_query_chars").integer_range
    assert (allowed.from_value, allowed.to_value) == (1, MAX_QUERY_CHARS)
