"""RViz MarkerArray builders for predicted boxes (pure functions, no node state).

Each publish starts with a DELETEALL marker so boxes of the previous answer disappear, then for
detection i a LINE_LIST wireframe (namespace "boxes", id i) and a TEXT_VIEW_FACING label
"<label> <score>" (namespace "labels", id i). Colours come from a hash of the label, so the same
object class keeps its colour across frames and runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from llmi3d_core.geometry import box3d_corners
from llmi3d_core.prediction import Prediction
from llmi3d_core.visualize import BOX3D_EDGES, label_color

LINE_WIDTH_M = 0.02
TEXT_HEIGHT_M = 0.15


def _duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(sec=whole, nanosec=int(round((seconds - whole) * 1e9)))


def _point(xyz: Sequence[float]) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def prediction_markers(
    predictions: Sequence[Prediction], header: Header, lifetime_s: float = 0.0
) -> MarkerArray:
    """Build the MarkerArray for one answer: DELETEALL, then a wireframe and a label per box.

    Args:
        predictions: boxes in the camera optical frame (metres).
        header: the source image's header; markers use its frame_id and stamp.
        lifetime_s: marker lifetime; 0 keeps them until the next DELETEALL.
    """
    markers = MarkerArray()
    markers.markers.append(Marker(header=header, action=Marker.DELETEALL))
    lifetime = _duration(lifetime_s)
    for index, prediction in enumerate(predictions):
        r, g, b = label_color(prediction.label)
        color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        corners = np.asarray(box3d_corners(prediction.center, prediction.dims, prediction.rotation))

        wireframe = Marker(header=header, ns="boxes", id=index, type=Marker.LINE_LIST)
        wireframe.action = Marker.ADD
        wireframe.pose.orientation.w = 1.0
        wireframe.scale.x = LINE_WIDTH_M
        wireframe.color = color
        wireframe.lifetime = lifetime
        for i, j in BOX3D_EDGES:
            wireframe.points.extend([_point(corners[i]), _point(corners[j])])
        markers.markers.append(wireframe)

        text = Marker(header=header, ns="labels", id=index, type=Marker.TEXT_VIEW_FACING)
        text.action = Marker.ADD
        top = corners[np.argmin(corners[:, 1])]  # optical frame: -y is up
        text.pose.position = _point((prediction.center[0], top[1] - TEXT_HEIGHT_M, top[2]))
        text.pose.orientation.w = 1.0
        text.scale.z = TEXT_HEIGHT_M
        text.color = color
        text.lifetime = lifetime
        text.text = f"{prediction.label} {prediction.score:.2f}"
        markers.markers.append(text)
    return markers
