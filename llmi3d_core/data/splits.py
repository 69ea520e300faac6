"""Split selection: the queries a spec such as "test:novel@target" names (`select_queries`)."""

from __future__ import annotations

from llmi3d_core.data.format import SPLITS, Dataset, QueryRecord
from llmi3d_core.errors import InvalidInputError


def select_queries(dataset: Dataset, spec: str) -> list[QueryRecord]:
    """Pick the queries of a split specification.

    Grammar: ``SPLIT[:novel|:base][@GROUP[,GROUP...]]`` where SPLIT is train, val or test;
    ":novel" keeps only targets of held-out categories, ":base" only seen ones; each GROUP is a
    camera-group name or a "domain" value of DatasetInfo.camera_groups (e.g. "source").

    Examples: "train", "test:novel" (open-vocabulary test), "train@source" and "test@target"
    (camera-domain shift), "val:base@kitti_like".

    Raises:
        InvalidInputError: for an unknown split, filter or camera group.
    """
    head, _, groups_text = spec.partition("@")
    split, _, novelty = head.partition(":")
    if split not in SPLITS:
        raise InvalidInputError(f"split spec {spec!r}: split must be one of {list(SPLITS)}")
    if novelty not in ("", "novel", "base"):
        raise InvalidInputError(f"split spec {spec!r}: filter must be ':novel' or ':base'")
    groups: set[str] | None = None
    if groups_text:
        groups = set()
        known = dataset.info.camera_groups
        for name in groups_text.split(","):
            matched = {g for g, d in known.items() if g == name or d.get("domain") == name}
            if not matched:
                domains = sorted({str(d.get("domain")) for d in known.values() if "domain" in d})
                raise InvalidInputError(
                    f"split spec {spec!r}: {name!r} is neither a camera group {sorted(known)} "
                    f"nor a camera domain {domains}"
                )
            groups |= matched
    out = []
    for query in dataset.queries:
        if query.split != split:
            continue
        if novelty == "novel" and not query.novel_category:
            continue
        if novelty == "base" and query.novel_category:
            continue
        if groups is not None and query.camera_group not in groups:
            continue
        out.append(query)
    return out
