r"""Convert Omni3D JSON (SUN RGB-D, KITTI, nuScenes, Objectron, ARKitScenes, Hypersim) to ours.

    llmi3d data omni3d --json datasets/Omni3D/SUNRGBD_val.json --images-root datasets \\
        --out data/sunrgbd_val [--captions captions.json]

Omni3D (Brazil et al., CVPR 2023, https://github.com/facebookresearch/omni3d, DATA.md) stores one
COCO-like JSON per source dataset and split:

    {"info": {"id", "source", "name", "split", "version", "url"},
     "images": [{"id", "dataset_id", "width", "height", "file_path", "K" (3x3),
                 "src_90_rotate", "src_flagged"}],
     "categories": [{"id", "name", "supercategory"}],
     "annotations": [{"id", "image_id", "category_id", "category_name", "valid3D",
                      "bbox2D_tight", "bbox2D_proj", "bbox2D_trunc" ([x1, y1, x2, y2] px, -1 = n/a),
                      "bbox3D_cam" (8x3 m), "center_cam" (3, m), "dimensions" ([W, H, L] m),
                      "R_cam" (3x3), "behind_camera", "visibility", "truncation",
                      "segmentation_pts", "lidar_pts", "depth_error" (-1 = n/a)}]}

Its camera frame (+x right, +y down, +z forward), its box centre, its [W, H, L] order and its
corner order are ours, so the 3D fields are copied. What changes:

- our "bbox2D_proj" is the projected box clipped to the image, which Omni3D calls "bbox2D_trunc";
- our "bbox2D_tight" is Omni3D's tight box, or the clipped projected box where that is -1;
- "center_2D" is computed by projecting center_cam with K;
- "truncation" of -1 (unknown) becomes the fraction of the projected box's area outside the image;
  "visibility" of -1 becomes 1 - truncation (no occluders known); annotated values are kept;
- "scene" is "indoor" (SUN RGB-D, ARKitScenes, Hypersim), "street" (KITTI, nuScenes) or the
  source folder name (Objectron); "camera_group" is the source folder (first part of file_path).

Queries come from templates ("the chair", "the nearest chair", ...; see
`common.template_caption`) or from a caption file (IG3D-style, the format is documented
in `load_captions`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from llmi3d_core.data.convert.common import (
    ConversionOutput,
    ConversionSummary,
    TemplateConfig,
    add_output_flags,
    add_skip_missing_flag,
    box_corners,
    category_phrase,
    check_split_option,
    clip_box,
    decode_rgb,
    expect_int,
    expect_key,
    expect_str,
    expected_error,
    load_json_records,
    project_box,
    template_captions,
)
from llmi3d_core.data.convert.omni3d_json import (
    Omni3DAnnotation,
    Omni3DFile,
    Omni3DImage,
    load_omni3d,
)
from llmi3d_core.data.format import (
    IMAGE_SUFFIXES,
    SPLITS,
    DatasetInfo,
    ImageRecord,
    ObjectRecord,
    QueryRecord,
)
from llmi3d_core.data.writer import DatasetWriter, image_file_name
from llmi3d_core.errors import DataFormatError, InvalidInputError

# ---------------------------------------------------------------------------------------------
# Caption files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionEntry:
    """One query of a caption file (see `load_captions`).

    Attributes:
        image_id: Omni3D image id.
        ann_id: Omni3D annotation id of the referred object.
        text: The caption or question.
        type: "caption" or "question".
        answer: The object phrase to answer with; None means the category name.
        split: "train", "val" or "test" to override the JSON's split; None keeps it.
        where: file and line (or list index) it came from, for error messages.
    """

    image_id: int
    ann_id: int
    text: str
    type: str = "caption"
    answer: str | None = None
    split: str | None = None
    where: str = ""


CAPTION_TYPES = ("caption", "question")


def load_captions(path: str | Path) -> list[CaptionEntry]:
    """Read an IG3D-style caption file: referring captions / questions for Omni3D objects.

    IG3D (the LLMI3D paper's dataset built on Omni3D) has no public file layout that we know
    of, so this is our own, kept minimal. Either a JSON list or JSON Lines (one object a line):

        {"image_id": 12, "ann_id": 345, "text": "the lamp on the desk"}
        {"image_id": 12, "ann_id": 345, "type": "question",
         "text": "It is too dark to read: what should I use?", "answer": "lamp"}

    Keys: "image_id" and "ann_id" (Omni3D ids; "annotation_id" is accepted for "ann_id"),
    "text" ("caption" and "question" are accepted for it), optional "type" ("caption" default,
    or "question"), optional "answer" (the object phrase; default the category name) and optional
    "split" ("train"/"val"/"test", default the Omni3D JSON's split).

    Raises:
        DataFormatError: naming the file and the line (JSONL) or list index (JSON).
    """
    return [_parse_caption(entry, where) for where, entry in load_json_records(Path(path))]


def _parse_caption(entry: Any, where: str) -> CaptionEntry:
    if not isinstance(entry, dict):
        raise expected_error(where, "a JSON object with image_id, ann_id and text", entry)
    ann_key = "ann_id" if "ann_id" in entry else "annotation_id"
    text_key = next((k for k in ("text", "caption", "question") if k in entry), "text")
    kind = entry.get("type", "question" if text_key == "question" else "caption")
    if kind not in CAPTION_TYPES:
        raise expected_error(f"{where}.type", f"one of {list(CAPTION_TYPES)}", kind)
    split = entry.get("split")
    if split is not None and split not in SPLITS:
        raise expected_error(f"{where}.split", f"one of {list(SPLITS)}", split)
    answer = entry.get("answer")
    return CaptionEntry(
        image_id=expect_int(expect_key(entry, "image_id", where), f"{where}.image_id"),
        ann_id=expect_int(expect_key(entry, ann_key, where), f"{where}.{ann_key}"),
        text=expect_str(expect_key(entry, text_key, where), f"{where}.{text_key}").strip(),
        type=kind,
        answer=None if answer is None else expect_str(answer, f"{where}.answer"),
        split=split,
        where=where,
    )


# ---------------------------------------------------------------------------------------------
# Conversion: Omni3D -> our dataset format
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Omni3DConvertConfig:
    """Options of `convert_omni3d` (the CLI flags map one to one).

    Attributes:
        name: dataset name for dataset.json; "" means "omni3d_<first JSON stem>".
        split: "train"/"val"/"test" for every query; "" takes it from each JSON's info.split.
        min_visibility: objects annotated less visible are kept as objects but get no query.
        max_truncation: objects more truncated are kept as objects but get no query.
        skip_missing_images: leave out images whose file is missing instead of failing.
        templates: TemplateConfig of the template captions.
    """

    name: str = ""
    split: str = ""
    min_visibility: float = 0.0
    max_truncation: float = 1.0
    skip_missing_images: bool = False
    templates: TemplateConfig = field(default_factory=TemplateConfig)

    def __post_init__(self) -> None:
        check_split_option(self.split)
        if not 0.0 <= self.min_visibility <= 1.0 or not 0.0 <= self.max_truncation <= 1.0:
            raise InvalidInputError(
                "min_visibility and max_truncation must be in [0, 1], got "
                f"{self.min_visibility} and {self.max_truncation}"
            )


# Omni3D source folder (lower case) -> our scene label.
SCENES = {
    "sunrgbd": "indoor",
    "arkitscenes": "indoor",
    "hypersim": "indoor",
    "kitti_object": "street",
    "kitti": "street",
    "nuscenes": "street",
}


def _source_name(image: Omni3DImage, info: dict[str, Any]) -> str:
    """The Omni3D source dataset of an image: the first folder of its file_path ("SUNRGBD")."""
    parts = Path(image.file_path).parts
    if len(parts) > 1:
        return parts[0]
    return str(info.get("name", "omni3d")).split()[0] or "omni3d"


def _json_split(omni: Omni3DFile, override: str) -> str:
    if override:
        return override
    split = str(omni.info.get("split", "")).strip().lower()
    aliases = {"training": "train", "validation": "val", "testing": "test"}
    split = aliases.get(split, split)
    if split not in SPLITS:
        raise DataFormatError(
            f"{omni.path}: info.split is {omni.info.get('split')!r}, not one of Train/Val/Test; "
            "give the split explicitly (--split train|val|test)"
        )
    return split


def read_image_file(path: Path, width: int, height: int, rotate_90: int = 0) -> tuple[bytes, Any]:
    """Read a picture and check its size; returns (file bytes, decoded RGB or None).

    The decoded image is returned (and the bytes are to be re-encoded) only when the file had to
    be turned: when its size is (width, height) swapped and `rotate_90` is odd, it is rotated
    `rotate_90` times by 90 degrees counter-clockwise (Omni3D's src_90_rotate).

    Raises:
        DataFormatError: when the file cannot be decoded or has another size.
    """
    data = path.read_bytes()
    decoded = decode_rgb(data, path)
    got = decoded.shape[:2]
    if got == (height, width):
        return data, None
    if rotate_90 % 2 == 1 and got == (width, height):
        return data, np.ascontiguousarray(np.rot90(decoded, k=rotate_90))
    raise DataFormatError(
        f"{path}: picture is {got[1]}x{got[0]} px but the annotation says {width}x{height}"
    )


def _object_record(
    ann: Omni3DAnnotation, image: Omni3DImage, object_id: str
) -> tuple[ObjectRecord | None, str]:
    """Build our ObjectRecord from an Omni3D annotation; (None, reason) when it is unusable."""
    if ann.behind_camera:
        return None, "objects behind the camera"
    corners, extra = ann.bbox3D_cam, {"source_ann_id": ann.id}
    gap = float(np.linalg.norm(corners.mean(axis=0) - ann.center_cam))
    if gap > 1e-3 * (1.0 + float(np.linalg.norm(ann.center_cam))):
        # corners that do not surround center_cam would be refused by the dataset reader
        corners = box_corners(ann.center_cam, ann.dimensions, ann.R_cam)
        extra["bbox3D_recomputed"] = True
    projected = project_box(
        ann.center_cam,
        ann.dimensions,
        ann.R_cam,
        image.K,
        width=image.width,
        height=image.height,
        corners=corners,
    )
    if projected is None:
        return None, "objects behind the camera or out of view"
    if ann.bbox2D_trunc is not None:
        clipped = clip_box(ann.bbox2D_trunc, image.width, image.height)
    else:
        clipped = projected.bbox2D_clipped
    tight = ann.bbox2D_tight if ann.bbox2D_tight is not None else clipped
    tight = clip_box(tight, image.width, image.height)
    truncation = projected.truncation if ann.truncation is None else ann.truncation
    record = ObjectRecord(
        object_id=object_id,
        category_name=category_phrase(ann.category_name),
        attributes={},
        center_cam=ann.center_cam,
        dimensions=ann.dimensions,
        R_cam=ann.R_cam,
        bbox2D_tight=tight,
        bbox2D_proj=clipped,
        bbox3D_cam=projected.corners,
        center_2D=projected.center_2D,
        visibility=float(
            np.clip(1.0 - truncation if ann.visibility is None else ann.visibility, 0, 1)
        ),
        truncation=float(np.clip(truncation, 0.0, 1.0)),
        extra=extra,
    )
    return record, ""


def convert_omni3d(
    json_paths: Sequence[str | Path],
    images_root: str | Path,
    out_dir: str | Path,
    *,
    captions: str | Path | None = None,
    config: Omni3DConvertConfig = Omni3DConvertConfig(),
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Convert one or more Omni3D JSON files (and their pictures) into one dataset directory.

    Every valid-3D annotation in front of the camera becomes an object. Queries: with
    `captions`, exactly the file's captions/questions; without, one template caption per object
    that passes the visibility/truncation limits and that a template can single out
    (`template_caption`). Pictures are copied byte for byte (re-encoded only when rotated).

    Args:
        json_paths: Omni3D JSON files, e.g. [".../SUNRGBD_val.json", ".../KITTI_val.json"].
        images_root: the folder each image's file_path is relative to (Omni3D's datasets/).
        out_dir: the dataset directory to write.
        captions: an IG3D-style caption file (see `load_captions`), or None for templates.
        config: conversion options.
        overwrite: allow replacing a dataset already in out_dir.
        progress: show a tqdm progress bar.

    Returns:
        What was written and left out.

    Raises:
        DataFormatError: for a malformed JSON or caption file, a missing or wrongly sized
            picture, or a caption pointing at an unknown image or annotation.
        InvalidInputError: when out_dir already holds a dataset and overwrite is False.
    """
    if not json_paths:
        raise InvalidInputError("convert_omni3d needs at least one Omni3D JSON file")
    files = [load_omni3d(p) for p in json_paths]
    caption_map: dict[tuple[int, int], list[CaptionEntry]] | None = None
    if captions is not None:
        caption_map = {}
        known = {(a.image_id, a.id) for f in files for a in f.annotations}
        for entry in load_captions(captions):
            if (entry.image_id, entry.ann_id) not in known:
                raise DataFormatError(
                    f"{entry.where}: image_id {entry.image_id} / ann_id {entry.ann_id} is not a "
                    f"valid-3D annotation of {', '.join(str(f.path) for f in files)}"
                )
            caption_map.setdefault((entry.image_id, entry.ann_id), []).append(entry)

    info = DatasetInfo(
        name=config.name or f"omni3d_{files[0].path.stem}".lower(),
        seed=None,
        generator={
            "program": "llmi3d data omni3d",
            "sources": [str(f.path) for f in files],
            "captions": None if captions is None else str(captions),
        },
    )
    summary = ConversionSummary(out_dir=Path(out_dir))
    with DatasetWriter(out_dir, info, overwrite=overwrite) as writer:
        output = ConversionOutput(writer, summary)
        job = _Omni3DJob(Path(images_root), caption_map, config, output)
        for omni in files:
            split = _json_split(omni, config.split)
            summary.skip("annotations with valid3D false", omni.num_invalid3d)
            anns_of: dict[int, list[Omni3DAnnotation]] = {}
            for ann in omni.annotations:
                anns_of.setdefault(ann.image_id, []).append(ann)
            desc = f"omni3d {omni.path.name}"
            for image in tqdm(omni.images.values(), desc=desc, disable=not progress, unit="img"):
                job.convert_image(omni, image, anns_of.get(image.id, []), split)
        if caption_map is not None:
            unused = [k for k in caption_map if k not in job.used_captions]
            if unused:
                summary.skip("captions of left-out images or objects", len(unused))
        writer.info.camera_groups = output.camera_groups
    return summary


@dataclass
class _Omni3DJob:
    """State of one `convert_omni3d` run (the writer, the summary, the captions used)."""

    images_root: Path
    captions: dict[tuple[int, int], list[CaptionEntry]] | None
    config: Omni3DConvertConfig
    output: ConversionOutput
    used_captions: set[tuple[int, int]] = field(default_factory=set)

    @property
    def summary(self) -> ConversionSummary:
        """The run's summary (the output's)."""
        return self.output.summary

    def convert_image(
        self, omni: Omni3DFile, image: Omni3DImage, anns: list[Omni3DAnnotation], split: str
    ) -> None:
        """Write one Omni3D image, its objects and its queries (or count why it is left out)."""
        source = _source_name(image, omni.info)
        image_id = f"{omni.path.stem}_{image.id}"
        objects: list[ObjectRecord] = []
        kept: list[Omni3DAnnotation] = []
        for ann in anns:
            obj, reason = _object_record(ann, image, f"{image_id}_{ann.id}")
            if obj is None:
                self.summary.skip(reason)
                continue
            objects.append(obj)
            kept.append(ann)
        if not objects:
            self.summary.skip("images without usable objects")
            return
        path = self.images_root / image.file_path
        if not path.is_file():
            if self.config.skip_missing_images:
                self.summary.skip("images whose file is missing")
                return
            raise DataFormatError(
                f"{omni.path}: image id {image.id}: picture {path} not found (is --images-root "
                "the folder Omni3D's file_path values are relative to? --skip-missing-images "
                "leaves such images out)"
            )
        data, picture = read_image_file(path, image.width, image.height, image.src_90_rotate)
        suffix = path.suffix.lower()
        if picture is not None or suffix not in IMAGE_SUFFIXES:
            suffix = ".png"  # re-encoded: lossless
        record = ImageRecord(
            image_id=image_id,
            file_name=image_file_name(image_id, suffix),
            width=image.width,
            height=image.height,
            K=image.K,
            scene=SCENES.get(source.lower(), source.lower()),
            camera_group=source,
            objects=objects,
            extra={"source_image_id": image.id, "source_file_path": image.file_path},
        )
        if picture is not None:
            self.output.add_image(record, picture)
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            self.output.add_image(record, decode_rgb(data, path))
        else:
            self.output.add_image(record, encoded=data)
        self._write_queries(
            image=image, image_id=image_id, objects=objects, anns=kept, split=split, source=source
        )

    def _write_queries(
        self,
        *,
        image: Omni3DImage,
        image_id: str,
        objects: list[ObjectRecord],
        anns: list[Omni3DAnnotation],
        split: str,
        source: str,
    ) -> None:
        """Queries of one image: the caption file's, or one template caption per object."""
        wanted: list[tuple[ObjectRecord, str, str, str, str]] = []  # obj, split, type, text, answer
        if self.captions is not None:
            for obj, ann in zip(objects, anns, strict=True):
                for entry in self.captions.get((image.id, ann.id), []):
                    self.used_captions.add((image.id, ann.id))
                    answer = entry.answer or obj.category_name
                    wanted.append((obj, entry.split or split, entry.type, entry.text, answer))
        else:
            texts = template_captions(objects, width=image.width, config=self.config.templates)
            for obj, ann, text in zip(objects, anns, texts, strict=True):
                if ann.visibility is not None and ann.visibility < self.config.min_visibility:
                    self.summary.skip("template queries: object below min visibility")
                    continue
                if obj.truncation > self.config.max_truncation:
                    self.summary.skip("template queries: object above max truncation")
                    continue
                if text is None:
                    self.summary.skip("template queries: no unambiguous template")
                    continue
                wanted.append((obj, split, "caption", text, obj.category_name))
        for number, (obj, query_split, kind, text, answer) in enumerate(wanted):
            self.output.add_query(
                QueryRecord(
                    query_id=f"{image_id}_q{number:02d}",
                    image_id=image_id,
                    split=query_split,
                    type=kind,
                    text=text,
                    answer=answer,
                    target_object_id=obj.object_id,
                    camera_group=source,
                )
            )


# ---------------------------------------------------------------------------------------------
# CLI: llmi3d data omni3d
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of `llmi3d data omni3d`."""
    defaults = Omni3DConvertConfig()
    parser.add_argument(
        "--json", required=True, nargs="+", type=Path, metavar="FILE",
        help="Omni3D JSON file(s), e.g. datasets/Omni3D/SUNRGBD_val.json",
    )  # fmt: skip
    parser.add_argument(
        "--images-root", required=True, type=Path, metavar="DIR",
        help="folder the images' file_path values are relative to (Omni3D's datasets/)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument(
        "--captions", type=Path, metavar="FILE", default=None,
        help="IG3D-style caption file (JSON list or JSONL of {image_id, ann_id, text, ...}); "
        "without it, template captions ('the chair', 'the nearest chair') are made",
    )  # fmt: skip
    parser.add_argument("--name", default=defaults.name, help="dataset name (dataset.json)")
    parser.add_argument(
        "--split", choices=SPLITS, default=None,
        help="split of every query (default: each JSON's info.split)",
    )  # fmt: skip
    parser.add_argument("--min-visibility", type=float, default=defaults.min_visibility)
    parser.add_argument("--max-truncation", type=float, default=defaults.max_truncation)
    add_skip_missing_flag(parser, "file")
    add_output_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d data omni3d`; print the summary and return 0."""
    config = Omni3DConvertConfig(
        name=args.name,
        split=args.split or "",
        min_visibility=args.min_visibility,
        max_truncation=args.max_truncation,
        skip_missing_images=args.skip_missing_images,
    )
    summary = convert_omni3d(
        args.json,
        args.images_root,
        args.out,
        captions=args.captions,
        config=config,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(summary)
    return 0
