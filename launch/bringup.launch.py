"""Start llmi3d_node, and optionally the synthetic camera.

    ros2 launch llmi3d_ros bringup.launch.py image_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info
    ros2 launch llmi3d_ros bringup.launch.py synthetic_camera:=true

Defaults come from config/params.yaml (params_file); the arguments here only override them.
The node list is llmi3d_ros.bringup.plan(), shared with the `llmi3d_bringup` script.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from llmi3d_ros.bringup import ARGUMENT_HELP, BringupOptions, plan

ARGUMENTS = ARGUMENT_HELP  # launch argument -> description, as llmi3d_bringup --help


def _as_bool(text: str, name: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"invalid value for '{name}': {text!r} (expected a boolean)")


def _launch_nodes(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    options = BringupOptions(
        **{k: v for k, v in values.items() if k not in ("use_sim_time", "synthetic_camera")},
        use_sim_time=_as_bool(values["use_sim_time"], "use_sim_time"),
        synthetic_camera=_as_bool(values["synthetic_camera"], "synthetic_camera"),
    )
    return [
        Node(
            package="llmi3d_ros",
            executable=spec.executable,
            name=spec.name,
            namespace=options.namespace,
            parameters=[*spec.params_files, spec.parameters],
            remappings=[(s, t) for s, t in spec.remappings if s != t],
            arguments=["--ros-args", "--log-level", options.log_level],
            output="screen",
        )
        for spec in plan(options)
    ]


def generate_launch_description():
    defaults = BringupOptions()
    declared = [
        DeclareLaunchArgument(name, default_value=str(getattr(defaults, name)).lower()
                              if isinstance(getattr(defaults, name), bool)
                              else str(getattr(defaults, name)), description=text)
        for name, text in ARGUMENTS.items()
    ]  # fmt: skip
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_nodes)])
