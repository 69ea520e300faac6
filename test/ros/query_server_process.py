"""A bare llmi3d_msgs/srv/Query server run in its own process by test_interfaces.py.

It answers every query with one fixed detection built from the request, so the test checks the
interface packages and cross-process DDS, independent of the model.
"""

import rclpy
from llmi3d_msgs.srv import Query
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from vision_msgs.msg import Detection3D, ObjectHypothesisWithPose


class QueryServer(Node):
    def __init__(self) -> None:
        super().__init__("interface_test_server")
        self.create_service(Query, "query", self.on_query)

    def on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        response.success = True
        response.message = f"echo of {len(request.box_prompt)} box values"
        response.answer = request.query
        response.detections.header.frame_id = "camera_optical_frame"
        det = Detection3D()
        det.id = "0"
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = request.query
        hyp.hypothesis.score = 0.5
        det.results.append(hyp)
        det.bbox.center.position.z = 2.0
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = 1.0, 2.0, 3.0
        response.detections.detections.append(det)
        return response


def main() -> None:
    rclpy.init()
    node = QueryServer()
    print("ready", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
