"""The interface packages work across processes: a Query service call returns vision_msgs types."""

from __future__ import annotations

import os

from conftest import HERE, spin_until, start_process, stop_process
from llmi3d_msgs.srv import Query
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from vision_msgs.msg import Detection3DArray


def test_dds_is_confined_to_loopback() -> None:
    """Every test process inherits the loopback-only DDS settings."""
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.path.isfile(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"])


def test_query_service_across_processes(client_node: Node) -> None:
    """A client in this process calls a Query server in another and gets a Detection3DArray."""
    server = start_process([str(HERE / "query_server_process.py")])
    executor = SingleThreadedExecutor()
    executor.add_node(client_node)
    try:
        client = client_node.create_client(Query, "query")
        assert client.wait_for_service(timeout_sec=20.0), stop_process(server)
        service_types = dict(client_node.get_service_names_and_types())
        request = Query.Request(query="lamp", box_prompt=[1.0, 2.0, 30.0, 40.0])
        future = client.call_async(request)
        assert spin_until(executor, future.done, timeout_s=10.0)
        response = future.result()
    finally:
        executor.shutdown()
        stop_process(server)

    assert response.success
    assert response.answer == "lamp"
    assert response.message == "echo of 4 box values"
    assert service_types["/query"] == ["llmi3d_msgs/srv/Query"]
    assert isinstance(response.detections, Detection3DArray)
    fields = Query.Response.get_fields_and_field_types()
    assert fields["detections"] == "vision_msgs/Detection3DArray"
    assert Detection3DArray.__module__.startswith("vision_msgs.msg")
    detection = response.detections.detections[0]
    assert detection.results[0].hypothesis.class_id == "lamp"
    assert detection.bbox.size.z == 3.0
