"""A PNG contact sheet of dataset samples with their ground-truth 3D boxes drawn.

    llmi3d data contact-sheet data/synth --out sheet.png [--num 12 --cols 3 --cell-width 480]

Each cell is one image with every object's 3D box (wireframe, coloured by category, labelled),
its projected 3D centre (a dot) and, thin, its tight 2D box; the caption strip names the image,
camera group and f_x. Used to eyeball that boxes sit on the objects, for any dataset in our format.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from llmi3d_core.data.format import Dataset, ImageRecord
from llmi3d_core.data.images import load_rgb
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.errors import InvalidInputError
from llmi3d_core.visualize import draw_boxes, label_color_u8

_STRIP_PX = 22


def annotate(image_rgb: np.ndarray, record: ImageRecord) -> np.ndarray:
    """Return a copy of the picture with the record's 3D boxes, centres and 2D boxes drawn."""
    boxes = [(o.bbox3D_cam, o.category_name) for o in record.objects]
    canvas = draw_boxes(image_rgb, boxes, record.K)
    for obj in record.objects:
        color = label_color_u8(obj.category_name)
        x1, y1, x2, y2 = (round(float(v)) for v in obj.bbox2D_tight)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 1, cv2.LINE_AA)
        u, v = (round(float(c)) for c in obj.center_2D)
        cv2.circle(canvas, (u, v), 4, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(canvas, (u, v), 3, color, -1, cv2.LINE_AA)
    return canvas


def _cell(dataset: Dataset, record: ImageRecord, cell_width: int) -> np.ndarray:
    annotated = annotate(load_rgb(dataset.root / record.file_name), record)
    height = max(1, round(annotated.shape[0] * cell_width / annotated.shape[1]))
    cell = cv2.resize(annotated, (cell_width, height), interpolation=cv2.INTER_AREA)
    strip = np.full((_STRIP_PX, cell_width, 3), 255, dtype=np.uint8)
    text = (
        f"{record.image_id}  {record.camera_group}  fx={record.K[0, 0]:.0f}  "
        f"{record.width}x{record.height}  {len(record.objects)} obj"
    )
    cv2.putText(strip, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, cell])


def contact_sheet(
    root: str | Path, *, num: int = 12, cols: int = 3, cell_width: int = 480
) -> np.ndarray:
    """Build the sheet (H, W, 3) RGB from the first `num` images of a dataset.

    Raises:
        InvalidInputError: for num, cols or cell_width < 1, or a dataset without images.
        DataFormatError: for a malformed dataset or an unreadable picture.
    """
    for name, value in (("num", num), ("cols", cols), ("cell_width", cell_width)):
        if value < 1:
            raise InvalidInputError(f"{name} must be >= 1, got {value}")
    dataset = read_dataset(root)
    records = dataset.images[:num]
    if not records:
        raise InvalidInputError(f"{root}: the dataset has no images")
    cells = [_cell(dataset, r, cell_width) for r in records]
    cols = min(cols, len(cells))
    rows = []
    for start in range(0, len(cells), cols):
        row_cells = cells[start : start + cols]
        height = max(c.shape[0] for c in row_cells)
        padded = [
            np.pad(c, ((0, height - c.shape[0]), (0, 4), (0, 0)), constant_values=255)
            for c in row_cells
        ]
        padded += [np.full_like(padded[0], 255)] * (cols - len(padded))
        rows.append(np.hstack(padded))
    sheet = np.vstack([np.pad(r, ((0, 4), (0, 0), (0, 0)), constant_values=255) for r in rows])
    return sheet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `llmi3d data contact-sheet`."""
    parser.add_argument("dataset", type=Path, help="dataset directory (docs/dataset_format.md)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--num", type=int, default=12, help="images on the sheet (the first N)")
    parser.add_argument("--cols", type=int, default=3, help="images per row")
    parser.add_argument("--cell-width", type=int, default=480, help="width of one cell, px")


def run(args: argparse.Namespace) -> int:
    """Run `llmi3d data contact-sheet`."""
    sheet = contact_sheet(args.dataset, num=args.num, cols=args.cols, cell_width=args.cell_width)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), np.ascontiguousarray(sheet[:, :, ::-1])):
        raise InvalidInputError(f"could not write {args.out} (is the suffix .png?)")
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]} px, {args.num} images max)")
    return 0
