"""Converters of real data into our dataset format (`llmi3d data omni3d | mono3drefer | from-bag`).

common        what they share: JSON checks, box projection, template captions, output, CLI flags
omni3d        Omni3D JSON (+ optional caption files); omni3d_json reads and checks the JSON
mono3drefer   Mono3DRefer on KITTI; kitti reads KITTI labels and calibration
bag           labelled frames of a rosbag2; bag_labels reads its Detection3DArray or a file
"""
