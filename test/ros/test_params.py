"""config/params.yaml and the node's parameter table agree."""

from __future__ import annotations

from dataclasses import fields

import yaml
from conftest import HERE

from llmi3d_core.inference import MAX_QUERY_CHARS
from llmi3d_core.prediction import DEFAULT_MIN_SCORE
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


def test_min_score_default_is_the_core_default_and_ranged() -> None:
    """min_score's default has one home (llmi3d_core.inference); its descriptor allows [0, 1]."""
    assert NodeParams().min_score == DEFAULT_MIN_SCORE
    assert not hasattr(NodeParams(), "score_threshold")
    [allowed] = descriptor("min_score").floating_point_range
    assert (allowed.from_value, allowed.to_value) == (0.0, 1.0)


def test_max_query_chars_cannot_exceed_what_core_accepts() -> None:
    """The node's query-length limit comes from core (rclpy refuses values outside the range)."""
    assert NodeParams().max_query_chars == MAX_QUERY_CHARS
    [allowed] = descriptor("max_query_chars").integer_range
    assert (allowed.from_value, allowed.to_value) == (1, MAX_QUERY_CHARS)
