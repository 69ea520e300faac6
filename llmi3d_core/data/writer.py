"""Writing a dataset directory: `DatasetWriter` streams records and pictures, checked as written.

Every record goes through the reader's own checks (`codec`) before it is written, so a dataset the
writer finishes always reads back; dataset.json is written last, so a directory without it is an
unfinished write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from llmi3d_core.data.codec import (
    Where,
    dumps_info,
    dumps_line,
    image_to_dict,
    parse_image,
    parse_info,
    parse_query,
    query_to_dict,
)
from llmi3d_core.data.format import (
    DATASET_JSON,
    IMAGE_SUFFIXES,
    IMAGES_DIR,
    IMAGES_JSONL,
    QUERIES_JSONL,
    DatasetInfo,
    ImageRecord,
    QueryRecord,
)
from llmi3d_core.errors import DataFormatError, InvalidInputError


def encode_image(image_rgb: np.ndarray, suffix: str) -> bytes:
    """Encode an (H, W, 3) uint8 RGB image as PNG or JPEG bytes (deterministic).

    Raises:
        InvalidInputError: for a wrong shape, dtype or suffix.
    """
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise InvalidInputError(
            f"image must be (H, W, 3) uint8 RGB, got {image_rgb.shape} {image_rgb.dtype}"
        )
    if suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(f"image suffix must be one of {IMAGE_SUFFIXES}, got {suffix!r}")
    ok, buffer = cv2.imencode(suffix.lower(), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise InvalidInputError(f"OpenCV could not encode a {image_rgb.shape} image as {suffix}")
    return bytes(buffer.tobytes())


class DatasetWriter:
    """Write a dataset directory line by line (streaming: memory does not grow with images).

    Use as a context manager; dataset.json is written last, on a clean exit, so a directory
    without it is an unfinished write:

        with DatasetWriter(out_dir, DatasetInfo(name="ig3d-synth", seed=0)) as writer:
            writer.add_image(image_record, image_rgb)      # writes images/<id>.png and one line
            writer.add_query(query_record)                 # after its image

    Every record is checked with the reader's own checks before it is written, so a written
    dataset always reads back. If `info.categories` is empty at close, it is filled with the
    sorted categories seen.

    Args:
        root: the dataset directory (created).
        info: the dataset.json contents; may still be changed through `self.info` before close.
        overwrite: allow writing into a directory that already holds a dataset.
        float_decimals: digits kept after the decimal point (6: micrometres and micro-pixels).

    Raises:
        InvalidInputError: when root already holds a dataset and overwrite is False.
    """

    def __init__(
        self,
        root: str | Path,
        info: DatasetInfo,
        *,
        overwrite: bool = False,
        float_decimals: int = 6,
    ) -> None:
        self.root = Path(root)
        self.info = info
        self.float_decimals = float_decimals
        names = (DATASET_JSON, IMAGES_JSONL, QUERIES_JSONL)
        existing = [n for n in names if (self.root / n).exists()]
        if existing and not overwrite:
            raise InvalidInputError(
                f"{self.root} already holds {existing}; pass overwrite=True (CLI: --overwrite) "
                "or choose another directory"
            )
        (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        if overwrite:
            (self.root / DATASET_JSON).unlink(missing_ok=True)
        self._images = open(self.root / IMAGES_JSONL, "w", encoding="utf-8")  # noqa: SIM115
        self._queries = open(self.root / QUERIES_JSONL, "w", encoding="utf-8")  # noqa: SIM115
        self._objects_of: dict[str, set[str]] = {}
        self._object_ids: set[str] = set()
        self._query_ids: set[str] = set()
        self._categories: set[str] = set()
        self.num_images = 0
        self.num_queries = 0
        self._closed = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._images.close()
            self._queries.close()
            self._closed = True

    def _check(self, line: str, parse: Any, what: str) -> Any:
        """Run the reader's checks on the line about to be written (InvalidInputError if bad)."""
        where = Where(Path(f"<{what} being written>"), self.num_images + self.num_queries + 1)
        try:
            return parse(json.loads(line), where)
        except DataFormatError as err:
            raise InvalidInputError(str(err)) from None

    def add_image(
        self,
        record: ImageRecord,
        image_rgb: np.ndarray | None = None,
        *,
        encoded: bytes | None = None,
    ) -> None:
        """Write one image record and (optionally) its picture.

        Args:
            record: the image and its objects; record.file_name is where the picture goes.
            image_rgb: (H, W, 3) uint8 RGB picture to encode (by file_name's suffix), or
            encoded: already-encoded file bytes (e.g. a JPEG copied unchanged), or neither when
                the picture is already at root/file_name.

        Raises:
            InvalidInputError: bad record, repeated id, or picture size not (height, width).
        """
        if self._closed:
            raise InvalidInputError("DatasetWriter is closed")
        line = dumps_line(image_to_dict(record), self.float_decimals)
        checked: ImageRecord = self._check(line, parse_image, IMAGES_JSONL)
        if checked.image_id in self._objects_of:
            raise InvalidInputError(f"image_id {checked.image_id!r} was already written")
        ids = {o.object_id for o in checked.objects}
        repeated = sorted(ids & self._object_ids)
        if repeated:
            raise InvalidInputError(f"object_id(s) {repeated} were already written")
        target = self.root / checked.file_name
        if image_rgb is not None:
            if image_rgb.shape[:2] != (checked.height, checked.width):
                raise InvalidInputError(
                    f"image {checked.image_id!r}: picture is {image_rgb.shape[:2]} (H, W) but the "
                    f"record says ({checked.height}, {checked.width})"
                )
            encoded = encode_image(image_rgb, target.suffix)
        if encoded is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encoded)
        elif not target.is_file():
            raise InvalidInputError(
                f"image {checked.image_id!r}: no picture given and {target} does not exist"
            )
        self._images.write(line + "\n")
        self._objects_of[checked.image_id] = ids
        self._object_ids |= ids
        self._categories |= {o.category_name for o in checked.objects}
        self.num_images += 1

    def add_query(self, record: QueryRecord) -> None:
        """Write one query; its image must have been added before.

        Raises:
            InvalidInputError: bad record, repeated id, unknown image or target object.
        """
        if self._closed:
            raise InvalidInputError("DatasetWriter is closed")
        line = dumps_line(query_to_dict(record), self.float_decimals)
        checked: QueryRecord = self._check(line, parse_query, QUERIES_JSONL)
        if checked.query_id in self._query_ids:
            raise InvalidInputError(f"query_id {checked.query_id!r} was already written")
        objects = self._objects_of.get(checked.image_id)
        if objects is None:
            raise InvalidInputError(
                f"query {checked.query_id!r}: image {checked.image_id!r} has not been added"
            )
        for object_id in checked.target_object_ids:
            if object_id not in objects:
                raise InvalidInputError(
                    f"query {checked.query_id!r}: image {checked.image_id!r} has no object "
                    f"{object_id!r}; its objects: {sorted(objects)}"
                )
        self._queries.write(line + "\n")
        self._query_ids.add(checked.query_id)
        self.num_queries += 1

    def close(self) -> Path:
        """Flush the JSONL files and write dataset.json; return the dataset directory."""
        if self._closed:
            return self.root
        self._images.close()
        self._queries.close()
        if not self.info.categories:
            self.info.categories = sorted(self._categories)
        text = dumps_info(self.info, self.float_decimals)
        parse_info(json.loads(text), Where(self.root / DATASET_JSON, None))
        (self.root / DATASET_JSON).write_text(text + "\n", encoding="utf-8")
        self._closed = True
        return self.root


def image_file_name(image_id: str, suffix: str = ".png") -> str:
    """Return the conventional relative picture path of an image id: images/<id><suffix>."""
    if suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidInputError(f"image suffix must be one of {IMAGE_SUFFIXES}, got {suffix!r}")
    return f"{IMAGES_DIR}/{image_id}{suffix}"
