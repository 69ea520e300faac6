r"""Convert Mono3DRefer (Mono3DVG, Zhan et al., AAAI 2024) with its KITTI calib and labels to ours.

    llmi3d data mono3drefer --json Mono3DRefer/Mono3DRefer.json --kitti-root Mono3DRefer \
        --out data/mono3drefer

Inputs (https://github.com/ZhanYang-nwpu/Mono3DVG):

- Mono3DRefer.json: a list of {"im_name": "000123", "instanceID": int, "ann_id": int,
  "objectName": "car", "label_2": the target's KITTI label, "description": "..."}. The released
  file stores "label_2" as the text of a Python list of the label's tokens
  ("['Car', '0.00', '0', '-1.58', ...]"); a plain KITTI line or a JSON list is accepted too.
- KITTI_ROOT/calib/<im_name>.txt with a "P2: 12 numbers" line (3x4, row-major).
- KITTI_ROOT/images/<im_name>.png (Mono3DRefer layout) or image_2/ (KITTI layout).
- optional KITTI_ROOT/label_2/<im_name>.txt: every object of the image, one KITTI label a line
  ("type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry [score]"); without it, an image's
  objects are the targets named in the JSON.
- Mono3DRefer_{train,val,test}_image.txt next to the JSON (or in --split-dir): image names.
  (`training/` subfolders of KITTI_ROOT are searched too.)

KITTI label -> our object (camera optical frame, metres):

- KITTI's (x, y, z) is the BOTTOM centre of the box in the rectified reference camera (cam 0)
  frame, y pointing down; the box centre is (x, y - h/2, z).
- The picture is camera 2, whose projection P2 = K [I | t] carries an offset t = K^-1 P2[:, 3]
  (about 6 cm along x); our frame is camera 2's, so center_cam = (x, y - h/2, z) + t and K =
  P2[:, :3]. Projecting center_cam with K then equals projecting the KITTI point with P2.
- dimensions [W, H, L] = [w, h, l]; R_cam = R_y(ry) = [[cos ry, 0, sin ry], [0, 1, 0],
  [-sin ry, 0, cos ry]], since KITTI's length runs along the object's x (as ours) and its width
  along z: the corners are exactly the KITTI devkit's.
- bbox2D_tight = the KITTI 2D box (clipped to the image); bbox2D_proj and truncation come from
  projecting the corners; visibility = (1 - truncation) x {0: 1.0, 1: 0.6, 2: 0.3, 3: 1.0}[occluded]
  (KITTI gives occlusion levels, not fractions: these numbers are our rough reading of them).
- DontCare labels are left out; category_name = objectName (or the KITTI type) in lower case
  with "_" -> " " ("person_sitting" -> "person sitting").
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from llmi3d_core.data.convert.common import (
    ConversionOutput,
    ConversionSummary,
    add_output_flags,
    add_skip_missing_flag,
    category_phrase,
    check_split_option,
    clip_box,
    decode_rgb,
    expect_int,
    expect_key,
    expect_str,
    load_json,
    project_box,
)
from llmi3d_core.data.convert.kitti import (
    KittiObject,
    kitti_to_camera,
    load_kitti_calib,
    load_kitti_labels,
    parse_kitti_label,
)
from llmi3d_core.data.format import SPLITS, DatasetInfo, ImageRecord, ObjectRecord, QueryRecord
from llmi3d_core.data.writer import DatasetWriter, image_file_name
from llmi3d_core.errors import DataFormatError

# KITTI occlusion level -> fraction of the object seen (0 fully visible, 1 partly occluded,
# 2 largely occluded, 3 unknown). Rough: KITTI defines levels, not fractions.
OCCLUSION_VISIBILITY = {0: 1.0, 1: 0.6, 2: 0.3, 3: 1.0}
IMAGE_DIRS = ("images", "image_2")
SPLIT_FILE = "Mono3DRefer_{split}_image.txt"

# ---------------------------------------------------------------------------------------------
# Parsing: Mono3DRefer JSON and split files -> plain dataclasses
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mono3DReferEntry:
    """One Mono3DRefer description of one object.

    Attributes:
        im_name: KITTI image name, e.g. "000123".
        instance_id: Mono3DRefer's instanceID.
        ann_id: Mono3DRefer's ann_id.
        object_name: the target's class phrase, e.g. "car".
        label: the target's KITTI label.
        description: the referring description.
        where: file and list index, for messages.
    """

    im_name: str
    instance_id: int
    ann_id: int
    object_name: str
    label: KittiObject
    description: str
    where: str = ""


def _label_tokens(value: Any, where: str) -> str | list[Any]:
    """Mono3DRefer's "label_2": the text of a Python list, a plain KITTI line, or a JSON list."""
    if isinstance(value, list):
        return value
    text = expect_str(value, where)
    if text.lstrip().startswith("["):
        try:
            tokens = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise DataFormatError(
                f"{where}: expected the text of a list of KITTI label tokens, got {text[:80]!r}"
            ) from None
        if not isinstance(tokens, (list, tuple)):
            raise DataFormatError(f"{where}: expected a list of KITTI label tokens, got {text!r}")
        return list(tokens)
    return text


def load_mono3drefer(path: str | Path) -> list[Mono3DReferEntry]:
    """Parse Mono3DRefer.json.

    Raises:
        DataFormatError: naming the file and list index of the first malformed entry.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise DataFormatError(
            f"{path}: expected a JSON list of {{im_name, instanceID, ann_id, objectName, "
            f"label_2, description}}, got {type(data).__name__}"
        )
    entries = []
    for index, entry in enumerate(data):
        where = f"{path}: [{index}]"
        im_name = expect_key(entry, "im_name", where)
        if isinstance(im_name, int) and not isinstance(im_name, bool):
            im_name = f"{im_name:06d}"
        im_name = expect_str(im_name, f"{where}.im_name").strip()
        if "/" in im_name or "\\" in im_name or im_name.startswith("."):
            raise DataFormatError(f"{where}.im_name: expected a file stem, got {im_name!r}")
        label_where = f"{where}.label_2"
        label = parse_kitti_label(
            _label_tokens(expect_key(entry, "label_2", where), label_where), label_where
        )
        if label.type == "DontCare" or min(label.h, label.w, label.l) <= 0:
            raise DataFormatError(f"{label_where}: expected a 3D box with h, w, l > 0, got {label}")
        entries.append(
            Mono3DReferEntry(
                im_name=im_name,
                instance_id=expect_int(
                    expect_key(entry, "instanceID", where), f"{where}.instanceID"
                ),
                ann_id=expect_int(expect_key(entry, "ann_id", where), f"{where}.ann_id"),
                object_name=expect_str(
                    expect_key(entry, "objectName", where), f"{where}.objectName"
                ),
                label=label,
                description=expect_str(
                    expect_key(entry, "description", where), f"{where}.description"
                ).strip(),
                where=where,
            )
        )
    return entries


def load_split_files(split_dir: str | Path) -> dict[str, str]:
    """Read Mono3DRefer_{train,val,test}_image.txt: image name -> split.

    Returns:
        The mapping; empty when none of the three files exists.

    Raises:
        DataFormatError: when an image is listed in two splits.
    """
    split_dir = Path(split_dir)
    split_of: dict[str, str] = {}
    for split in SPLITS:
        path = split_dir / SPLIT_FILE.format(split=split)
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            if split_of.get(name, split) != split:
                raise DataFormatError(
                    f"{path}: line {number}: image {name!r} is already in split {split_of[name]!r}"
                )
            split_of[name] = split
    return split_of


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mono3DReferConvertConfig:
    """Options of `convert_mono3drefer` (the CLI flags map one to one).

    Attributes:
        name: dataset name for dataset.json.
        split: put every query in this split; "" reads the Mono3DRefer split files.
        split_dir: folder of Mono3DRefer_{train,val,test}_image.txt; "" = the JSON's folder.
        skip_missing_images: leave out images whose picture or calib is missing, not fail.
    """

    name: str = "mono3drefer"
    split: str = ""
    split_dir: str = ""
    skip_missing_images: bool = False

    def __post_init__(self) -> None:
        check_split_option(self.split)


def _find(root: Path, subdirs: tuple[str, ...], name: str) -> Path | None:
    """The first existing root/[training/]sub/name."""
    for base in (root, root / "training"):
        for sub in subdirs:
            if (base / sub / name).is_file():
                return base / sub / name
    return None


def _object(
    label: KittiObject,
    P2: np.ndarray,
    *,
    width: int,
    height: int,
    object_id: str,
    name: str,
) -> ObjectRecord | None:
    """Our ObjectRecord of a KITTI label; None when its box is not in front of the camera."""
    center, dims, R = kitti_to_camera(label, P2)
    K = P2[:, :3]
    projected = project_box(center, dims, R, K, width=width, height=height)
    if projected is None:
        return None
    tight = clip_box(label.bbox, width, height)
    if tight[2] <= tight[0] or tight[3] <= tight[1]:
        tight = projected.bbox2D_clipped
    seen = OCCLUSION_VISIBILITY.get(label.occluded, 1.0)
    return ObjectRecord(
        object_id=object_id,
        category_name=category_phrase(name),
        attributes={},
        center_cam=center,
        dimensions=dims,
        R_cam=R,
        bbox2D_tight=tight,
        bbox2D_proj=projected.bbox2D_clipped,
        bbox3D_cam=projected.corners,
        center_2D=projected.center_2D,
        visibility=float(np.clip(seen * (1.0 - projected.truncation), 0.0, 1.0)),
        truncation=projected.truncation,
        extra={
            "kitti": {
                "type": label.type,
                "truncated": label.truncated,
                "occluded": label.occluded,
                "alpha": label.alpha,
            }
        },
    )


def convert_mono3drefer(
    json_path: str | Path,
    kitti_root: str | Path,
    out_dir: str | Path,
    *,
    config: Mono3DReferConvertConfig = Mono3DReferConvertConfig(),
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Convert Mono3DRefer (+ KITTI calib, pictures and optional label_2) into our format.

    One caption query per JSON entry (text = description, answer = objectName); the split of
    its image comes from the split files (or `config.split`).

    Args:
        json_path: Mono3DRefer.json.
        kitti_root: folder with calib/, images/ (or image_2/) and optionally label_2/.
        out_dir: the dataset directory to write.
        config: conversion options.
        overwrite: allow replacing a dataset already in out_dir.
        progress: show a tqdm progress bar.

    Returns:
        What was written and left out.

    Raises:
        DataFormatError: for malformed JSON, calib or label files, a missing picture or calib
            (unless skipped), or missing split files when no split is given.
        InvalidInputError: when out_dir already holds a dataset and overwrite is False.
    """
    json_path, kitti_root = Path(json_path), Path(kitti_root)
    entries = load_mono3drefer(json_path)
    split_of: dict[str, str] = {}
    if not config.split:
        split_dir = Path(config.split_dir) if config.split_dir else json_path.parent
        split_of = load_split_files(split_dir)
        if not split_of:
            raise DataFormatError(
                f"{split_dir}: no {SPLIT_FILE.format(split='{train,val,test}')} found; give "
                "--split-dir or put every query in one split with --split"
            )
    by_image: dict[str, list[Mono3DReferEntry]] = {}
    for entry in entries:
        by_image.setdefault(entry.im_name, []).append(entry)

    info = DatasetInfo(
        name=config.name,
        seed=None,
        generator={"program": "llmi3d data mono3drefer", "source": str(json_path)},
    )
    summary = ConversionSummary(out_dir=Path(out_dir))
    with DatasetWriter(out_dir, info, overwrite=overwrite) as writer:
        output = ConversionOutput(writer, summary)
        for im_name, targets in tqdm(
            by_image.items(), desc="mono3drefer", disable=not progress, unit="img"
        ):
            split = config.split or split_of.get(im_name, "")
            if not split:
                summary.skip("queries of images in no split file", len(targets))
                continue
            _convert_image(
                im_name, targets, split, kitti_root=kitti_root, config=config, output=output
            )
        writer.info.camera_groups = output.camera_groups
    return summary


def _convert_image(
    im_name: str,
    targets: list[Mono3DReferEntry],
    split: str,
    *,
    kitti_root: Path,
    config: Mono3DReferConvertConfig,
    output: ConversionOutput,
) -> None:
    """Write one KITTI image with its objects and its Mono3DRefer queries."""
    summary = output.summary
    found = _find_picture_and_calib(im_name, targets, kitti_root, config, summary)
    if found is None:
        return
    picture_path, calib_path = found
    P2 = load_kitti_calib(calib_path)
    data = picture_path.read_bytes()
    height, width = decode_rgb(data, picture_path).shape[:2]
    labels, names, target_index = _image_labels(im_name, targets, kitti_root)
    objects: dict[int, ObjectRecord] = {}
    for index, (label, name) in enumerate(zip(labels, names, strict=True)):
        if label.type == "DontCare":
            continue
        record = _object(
            label, P2, width=width, height=height, object_id=f"{im_name}_{index:02d}", name=name
        )
        if record is None:
            summary.skip("objects behind the camera or out of view")
            continue
        objects[index] = record
    if not objects:
        summary.skip("images without usable objects")
        summary.skip("queries of left-out images", len(targets))
        return
    output.add_image(
        ImageRecord(
            image_id=im_name,
            file_name=image_file_name(im_name, ".png"),
            width=width,
            height=height,
            K=P2[:, :3],
            scene="kitti",
            camera_group="kitti",
            objects=list(objects.values()),
            extra={"P2": P2},
        ),
        encoded=data,
    )
    for number, (entry, index) in enumerate(zip(targets, target_index, strict=True)):
        target = objects.get(index)
        if target is None:
            summary.skip("queries whose target is not in view")
            continue
        output.add_query(
            QueryRecord(
                query_id=f"{im_name}_q{number:02d}",
                image_id=im_name,
                split=split,
                type="caption",
                text=entry.description,
                answer=category_phrase(entry.object_name),
                target_object_id=target.object_id,
                camera_group="kitti",
                extra={"instance_id": entry.instance_id, "ann_id": entry.ann_id},
            )
        )


def _find_picture_and_calib(
    im_name: str,
    targets: list[Mono3DReferEntry],
    kitti_root: Path,
    config: Mono3DReferConvertConfig,
    summary: ConversionSummary,
) -> tuple[Path, Path] | None:
    """The picture and calib file of an image; None when one is missing and skipping is allowed.

    Raises:
        DataFormatError: naming the folders searched when one is missing and not skipped.
    """
    picture_path = _find(kitti_root, IMAGE_DIRS, f"{im_name}.png")
    calib_path = _find(kitti_root, ("calib",), f"{im_name}.txt")
    if picture_path is not None and calib_path is not None:
        return picture_path, calib_path
    missing = "picture" if picture_path is None else "calibration"
    if config.skip_missing_images:
        summary.skip(f"images whose {missing} is missing")
        summary.skip("queries of left-out images", len(targets))
        return None
    looked = [
        f"{kitti_root}/[training/]{d}" for d in (IMAGE_DIRS if picture_path is None else ("calib",))
    ]
    raise DataFormatError(
        f"{targets[0].where}: {missing} of image {im_name!r} not found (looked in "
        f"{', '.join(looked)}; --skip-missing-images leaves such images out)"
    )


def _image_labels(
    im_name: str, targets: list[Mono3DReferEntry], kitti_root: Path
) -> tuple[list[KittiObject], list[str], list[int]]:
    """The objects of an image: every label of label_2/<im>.txt (when present) and the targets.

    A target whose box is in label_2 takes that label (named with the target's objectName);
    one that is not is appended.

    Returns:
        (labels, their class phrases, the index into labels of each target).
    """
    label_path = _find(kitti_root, ("label_2",), f"{im_name}.txt")
    labels = load_kitti_labels(label_path) if label_path is not None else []
    names = [label.type for label in labels]
    target_index: list[int] = []
    for entry in targets:
        index = next((i for i, lab in enumerate(labels) if lab.same_box(entry.label)), None)
        if index is None:
            labels.append(entry.label)
            names.append(entry.object_name)
            index = len(labels) - 1
        else:
            names[index] = entry.object_name
        target_index.append(index)
    return labels, names, target_index


# ---------------------------------------------------------------------------------------------
# CLI: llmi3d data mono3drefer
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `llmi3d data mono3drefer`."""
    defaults = Mono3DReferConvertConfig()
    parser.add_argument("--json", required=True, type=Path, metavar="FILE", help="Mono3DRefer.json")
    parser.add_argument(
        "--kitti-root", required=True, type=Path, metavar="DIR",
        help="folder with calib/, images/ (or image_2/) and optionally label_2/",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument("--name", default=defaults.name, help="dataset name (dataset.json)")
    parser.add_argument(
        "--split", choices=SPLITS, default=None,
        help="put every query in this split instead of reading the split files",
    )  # fmt: skip
    parser.add_argument(
        "--split-dir", type=Path, default=None, metavar="DIR",
        help="folder of Mono3DRefer_{train,val,test}_image.txt (default: the JSON's folder)",
    )  # fmt: skip
    add_skip_missing_flag(parser, "picture or calib file")
    add_output_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d data mono3drefer`; print the summary and return 0."""
    config = Mono3DReferConvertConfig(
        name=args.name,
        split=args.split or "",
        split_dir="" if args.split_dir is None else str(args.split_dir),
        skip_missing_images=args.skip_missing_images,
    )
    summary = convert_mono3drefer(
        args.json,
        args.kitti_root,
        args.out,
        config=config,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(summary)
    return 0
