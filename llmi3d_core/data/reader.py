"""Reading a dataset directory: streamed JSONL lines, dataset.json, and the whole checked set.

`read_dataset` checks every line (through `codec`) and the cross-references between the files:
unique ids, queries that point at existing images and objects, optionally the picture files.
Malformed files raise `DataFormatError` whose message starts with `<file>:<line>:`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmi3d_core.data.codec import Where, parse_image, parse_info, parse_query
from llmi3d_core.data.format import (
    DATASET_JSON,
    IMAGES_DIR,
    IMAGES_JSONL,
    QUERIES_JSONL,
    TARGETS_KEY,
    Dataset,
    DatasetInfo,
    ImageRecord,
    QueryRecord,
)
from llmi3d_core.errors import DataFormatError


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number from 1, parsed JSON) for each non-blank line of a JSONL file.

    Raises:
        DataFormatError: when a line is not valid JSON (the message names file and line).
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({err.msg})") from None


def iter_images(path: str | Path) -> Iterator[ImageRecord]:
    """Stream the ImageRecords of an images.jsonl file, checking each line."""
    path = Path(path)
    for number, data in iter_jsonl(path):
        yield parse_image(data, Where(path, number))


def iter_queries(path: str | Path) -> Iterator[QueryRecord]:
    """Stream the QueryRecords of a queries.jsonl file, checking each line (not references)."""
    path = Path(path)
    for number, data in iter_jsonl(path):
        yield parse_query(data, Where(path, number))


def read_info(root: str | Path) -> DatasetInfo:
    """Read and check DIR/dataset.json.

    Raises:
        DataFormatError: when the file is missing, not JSON, or has wrong fields.
    """
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        raise DataFormatError(
            f"{path}: not found; a dataset directory holds {DATASET_JSON}, {IMAGES_JSONL}, "
            f"{QUERIES_JSONL} and {IMAGES_DIR}/ (is the writer finished?)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    return parse_info(data, Where(path, None))


def read_dataset(root: str | Path, *, check_files: bool = False) -> Dataset:
    """Read a whole dataset directory and check it, cross-references included.

    Args:
        root: the dataset directory.
        check_files: also check that every picture file exists (a stat per image).

    Returns:
        The Dataset, images and queries in file order.

    Raises:
        DataFormatError: for the first problem found, naming the file and line.
    """
    root = Path(root)
    info = read_info(root)
    images_path = root / IMAGES_JSONL
    queries_path = root / QUERIES_JSONL
    for path in (images_path, queries_path):
        if not path.is_file():
            raise DataFormatError(f"{path}: not found")
    images: list[ImageRecord] = []
    image_ids: dict[str, ImageRecord] = {}
    object_ids: set[str] = set()
    for number, data in iter_jsonl(images_path):
        where = Where(images_path, number)
        image = parse_image(data, where)
        if image.image_id in image_ids:
            raise where.error(f"image_id {image.image_id!r} repeats an earlier line")
        for obj in image.objects:
            if obj.object_id in object_ids:
                raise where.error(f"object_id {obj.object_id!r} repeats an earlier image's object")
            object_ids.add(obj.object_id)
        if check_files and not (root / image.file_name).is_file():
            raise where.error(f"picture {image.file_name!r} does not exist under {root}")
        image_ids[image.image_id] = image
        images.append(image)
    queries: list[QueryRecord] = []
    query_ids: set[str] = set()
    for number, data in iter_jsonl(queries_path):
        where = Where(queries_path, number)
        query = parse_query(data, where)
        _check_query_refs(query, image_ids, query_ids, where)
        query_ids.add(query.query_id)
        queries.append(query)
    return Dataset(root=root, info=info, images=images, queries=queries)


def _check_query_refs(
    query: QueryRecord, images: dict[str, ImageRecord], seen: set[str], where: Where
) -> None:
    if query.query_id in seen:
        raise where.error(f"query_id {query.query_id!r} repeats an earlier line")
    image = images.get(query.image_id)
    if image is None:
        raise where.error(f"image_id {query.image_id!r} is not in {IMAGES_JSONL}")
    object_ids = {o.object_id for o in image.objects}
    for index, object_id in enumerate(query.target_object_ids):
        if object_id not in object_ids:
            name = (
                "target_object_id"
                if len(query.target_object_ids) == 1
                else f"{TARGETS_KEY}[{index}]"
            )
            raise where.error(
                f"{name} {object_id!r} is not an object of image {query.image_id!r}; its "
                f"objects: {[o.object_id for o in image.objects]}"
            )
