"""MarkerArray builder: DELETEALL first, then a wireframe and a label per box."""

from __future__ import annotations

import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from llmi3d_core.prediction import Prediction
from llmi3d_core.visualize import label_color
from llmi3d_ros.markers import prediction_markers


def make_prediction(label: str, x: float) -> Prediction:
    return Prediction(
        label=label, answer="", center=np.array([x, 0.0, 4.0]), dims=np.array([2.0, 1.0, 0.5]),
        rotation=np.eye(3), score=0.5, box2d=np.zeros(4), center_uv=np.zeros(2),
    )  # fmt: skip


def test_markers_layout() -> None:
    """DELETEALL, then per box a 12-edge LINE_LIST and a 'label score' text, stable ids."""
    header = Header(frame_id="cam")
    markers = prediction_markers(
        [make_prediction("lamp", 0.0), make_prediction("chair", 1.0)], header, 2.5
    )
    kinds = [(m.action, m.type, m.ns, m.id) for m in markers.markers]
    assert kinds[0][0] == Marker.DELETEALL
    assert kinds[1:] == [
        (Marker.ADD, Marker.LINE_LIST, "boxes", 0),
        (Marker.ADD, Marker.TEXT_VIEW_FACING, "labels", 0),
        (Marker.ADD, Marker.LINE_LIST, "boxes", 1),
        (Marker.ADD, Marker.TEXT_VIEW_FACING, "labels", 1),
    ]
    wire, text = markers.markers[1], markers.markers[2]
    assert len(wire.points) == 24
    xs = sorted({round(p.x, 6) for p in wire.points})
    assert xs == [-1.0, 1.0]  # L = 2 along x, identity rotation
    assert text.text == "lamp 0.50"
    assert all(m.header.frame_id == "cam" for m in markers.markers)
    assert wire.lifetime.sec == 2 and wire.lifetime.nanosec == 500_000_000
    assert (wire.color.r, wire.color.g, wire.color.b) == pytest.approx(label_color("lamp"))
    assert 0.0 <= wire.color.r <= 1.0 and wire.color.a == 1.0


def test_colour_is_stable_per_label() -> None:
    """The same label always gets the same colour, different labels usually differ."""
    assert label_color("lamp") == label_color("lamp")
    assert label_color("lamp") != label_color("chair")
