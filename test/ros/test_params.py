"""config/params.yaml and the node's parameter table agree."""

from __future__ import annotations

from dataclasses import fields

import yaml
from conftest import HERE

from llmi3d_core.inference import MAX_QUERY_CHARS
from llmi3d_core.prediction import MAX_RATIO_TO_NOTHING, AnswerRule
from llmi3d_ros.params import NodeParams, descriptor, validate


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
    """The answer rule's defaults have one home (llmi3d_core.prediction.AnswerRule.SERVED); the
    descriptors allow what AnswerRule accepts: scores in [0, 1], the ratio in [0, 100]."""
    params = NodeParams()
    served = AnswerRule.SERVED
    assert (params.min_score, params.min_ratio_to_nothing, params.min_score_others) == (
        served.min_score, served.min_ratio_to_nothing, served.min_score_others
    )  # fmt: skip
    assert not hasattr(params, "score_threshold")
    for name, high in (
        ("min_score", 1.0), ("min_ratio_to_nothing", MAX_RATIO_TO_NOTHING),
        ("min_score_others", 1.0),
    ):  # fmt: skip
        [allowed] = descriptor(name).floating_point_range
        assert (allowed.from_value, allowed.to_value) == (0.0, high)
        AnswerRule(**{name: high})  # the core accepts both ends
        AnswerRule(**{name: 0.0})


def test_max_query_chars_cannot_exceed_what_core_accepts() -> None:
    """The node's query-length limit comes from core (rclpy refuses values outside the range)."""
    assert NodeParams().max_query_chars == MAX_QUERY_CHARS
    [allowed] = descriptor("max_query_chars").integer_range
    assert (allowed.from_value, allowed.to_value) == (1, MAX_QUERY_CHARS)
