"""LLMI3D core: model, data, training, evaluation and geometry. Pure Python + torch, no ROS."""

__version__ = "0.1.0"
