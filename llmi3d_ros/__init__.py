"""The thin ROS 2 layer of llmi3d: node, message conversions, markers, bringup and tools."""
