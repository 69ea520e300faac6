"""IG3D-Synth: determinism, geometric consistency, verified queries, CLI and contact sheet."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from llmi3d_core.cli import main as llmi3d_main
from llmi3d_core.data.reader import read_dataset
from llmi3d_core.data.synth.generator import SynthConfig, generate_dataset, novel_categories
from llmi3d_core.data.synth.query_config import QueryConfig
from llmi3d_core.data.synth.query_text import NEEDS
from llmi3d_core.data.synth.shapes import CATEGORIES, COLORS, build_mesh
from llmi3d_core.errors import ConfigError, DataFormatError, InvalidInputError
from llmi3d_core.geometry import box3d_corners, project


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """A small dataset over every camera group (rooms and streets), made once for the module."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    config = SynthConfig(num_images=16, seed=11, split_fractions=(0.5, 0.25, 0.25))
    return generate_dataset(config, out, progress=False)


@pytest.fixture(scope="module")
def synth_more_dir(tmp_path_factory) -> Path:
    """The same images with negative queries and multi-target captions turned on."""
    out = tmp_path_factory.mktemp("synth_more") / "ds"
    queries = QueryConfig(negatives_per_image=2, multi_target_per_image=2)
    config = SynthConfig(num_images=16, seed=11, split_fractions=(0.5, 0.25, 0.25), queries=queries)
    return generate_dataset(config, out, progress=False)


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    config = SynthConfig(num_images=3, seed=5, camera_groups=("vga_normal", "vga_wide"))
    a = _all_bytes(generate_dataset(config, tmp_path / "a", progress=False))
    b = _all_bytes(generate_dataset(config, tmp_path / "b", progress=False, workers=2))
    assert sorted(a) == sorted(b)
    assert len([k for k in a if k.startswith("images/")]) == 3
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs with the same seed"
    other = SynthConfig(num_images=3, seed=6, camera_groups=("vga_normal", "vga_wide"))
    c = _all_bytes(generate_dataset(other, tmp_path / "c", progress=False))
    assert c["images.jsonl"] != a["images.jsonl"]
    more = SynthConfig(
        num_images=3,
        seed=5,
        camera_groups=("vga_normal", "vga_wide"),
        queries=QueryConfig(negatives_per_image=1, multi_target_per_image=1),
    )
    d = _all_bytes(generate_dataset(more, tmp_path / "d", progress=False))
    e = _all_bytes(generate_dataset(more, tmp_path / "e", progress=False, workers=2))
    assert d == e


def test_ground_truth_is_geometrically_consistent(synth_dir):
    ds = read_dataset(synth_dir, check_files=True)
    assert len(ds.images) == 16
    groups = {im.camera_group for im in ds.images}
    assert len(groups) >= 3
    assert {im.scene for im in ds.images} == {"indoor", "street"}
    for image in ds.images:
        assert image.objects, f"image {image.image_id} has no objects"
        for obj in image.objects:
            uv = project(obj.center_cam, image.K)
            assert np.abs(uv - obj.center_2D).max() < 0.5, (image.image_id, obj.object_id)
            corners = box3d_corners(obj.center_cam, obj.dims_lwh, obj.R_cam)
            np.testing.assert_allclose(corners, obj.bbox3D_cam, atol=1e-5)
            # On the ground: every object's y axis is the (pitched) vertical.
            np.testing.assert_allclose(obj.R_cam[:, 1], image.objects[0].R_cam[:, 1], atol=1e-5)
            x1, y1, x2, y2 = obj.bbox2D_tight
            assert -0.5 <= x1 < x2 <= image.width - 0.5 and -0.5 <= y1 < y2 <= image.height - 0.5
            px1, py1, px2, py2 = obj.bbox2D_proj
            assert px1 - 1 <= x1 and py1 - 1 <= y1 and x2 <= px2 + 1 and y2 <= py2 + 1
            assert 0.05 <= obj.visibility <= 1.0 and 0.0 <= obj.truncation <= 1.0
            assert obj.attributes["color"] in COLORS
            assert obj.attributes["size"] in ("small", "medium", "large")
        # Bottoms of all boxes lie on one plane: the ground, camera height below the camera.
        height = image.extra["camera_height_m"]
        pitch = np.radians(image.extra["camera_pitch_deg"])
        down = np.array([0.0, np.cos(pitch), np.sin(pitch)])  # level-frame +y in camera frame
        for obj in image.objects:
            bottom = obj.center_cam + down * obj.dimensions[1] / 2
            assert bottom @ down == pytest.approx(height, abs=1e-4)


def test_catalogue_has_20_multi_part_categories_with_tight_meshes():
    assert len(CATEGORIES) >= 20
    for category in CATEGORIES:
        assert len(category.parts) >= 2, category.name
        mesh = build_mesh(category.name)
        np.testing.assert_allclose(mesh.vertices.min(axis=0), [-0.5, 0.0, -0.5], atol=1e-9)
        np.testing.assert_allclose(mesh.vertices.max(axis=0), [0.5, 1.0, 0.5], atol=1e-9)


# ------------------------------------------------------------------------------------------
# An independent checker: parse each caption and re-resolve it against the stored ground truth
# with plain (margin-free) comparisons.
# ------------------------------------------------------------------------------------------

_PREFIXES = (
    "give me the 3d boxes of ",
    "give me the 3d box of ",
    "where is ",
    "where are ",
    "show me ",
    "locate ",
    "find ",
)


def _singular(noun: str, categories: list[str]) -> str:
    """The category a plural noun names ("people" -> "person", "benches" -> "bench")."""
    candidates = {"people": ["person"]}.get(noun, [])
    if noun.endswith("ves"):
        candidates.append(noun[:-3] + "f")
    if noun.endswith("es"):
        candidates.append(noun[:-2])
    if noun.endswith("s"):
        candidates.append(noun[:-1])
    found = [c for c in candidates if c in categories]
    assert found, f"{noun!r} is not the plural of a category"
    return found[0]


def _parse_desc(
    text: str, categories: list[str], *, plural: bool = False
) -> tuple[str | None, str | None, str]:
    words = text.split(" ")
    assert words[0] == "the", text
    words = words[1:]
    size = words.pop(0) if words[0] in ("small", "large") else None
    color = words.pop(0) if words[0] in COLORS else None
    category = " ".join(words)
    if plural:
        category = _singular(category, categories)
    assert category in categories, f"unknown category {category!r} in {text!r}"
    return size, color, category


def _desc_any_number(text: str, categories: list[str]) -> tuple[tuple, bool]:
    """(desc, plural) of a noun phrase that may be singular or plural."""
    noun = " ".join(w for w in text.split(" ")[1:] if w not in ("small", "large", *COLORS))
    plural = noun not in categories
    return _parse_desc(text, categories, plural=plural), plural


def _matching(objects, desc):
    size, color, category = desc
    return [
        o
        for o in objects
        if o.category_name == category
        and (color is None or o.attributes["color"] == color)
        and (size is None or o.attributes["size"] == size)
    ]


def _the_one(objects, desc, text):
    found = _matching(objects, desc)
    assert len(found) == 1, f"anchor {desc} of {text!r} matches {len(found)} objects"
    return found[0]


def resolve_caption(text: str, image, categories) -> tuple[list, bool]:
    """The objects a caption denotes, and whether it speaks of several (a plural phrase).

    A caption is right when this is exactly its targets: one object for a single-target
    caption, none for a negative one, all of them (and a plural phrase) for a multi-target one.
    """
    objects = image.objects
    t = text.lower().rstrip(".?").strip()
    for prefix in _PREFIXES:
        if t.startswith(prefix):
            t = t[len(prefix) :]
            break

    def dist(o):
        return float(np.linalg.norm(o.center_cam))

    def u(o):
        return float(o.center_2D[0])

    if m := re.fullmatch(r"every (.+)", t):
        return _matching(objects, _parse_desc("the " + m.group(1), categories)), True
    if m := re.fullmatch(r"all (the .+)", t):
        return _matching(objects, _parse_desc(m.group(1), categories, plural=True)), True
    if m := re.fullmatch(r"(the .+?) on the (left|right)", t):
        found = _matching(objects, _parse_desc(m.group(1), categories, plural=True))
        middle = image.width / 2
        if m.group(2) == "left":
            return [o for o in found if u(o) < middle], True
        return [o for o in found if u(o) > middle], True
    if m := re.fullmatch(r"the (nearest|farthest|largest) (.+)", t):
        found = _matching(objects, _parse_desc("the " + m.group(2), categories))
        key = {
            "nearest": dist,
            "farthest": lambda o: -dist(o),
            "largest": lambda o: -np.prod(o.dimensions),
        }
        best = min(key[m.group(1)](o) for o in found)
        return [o for o in found if key[m.group(1)](o) == best], False
    if m := re.fullmatch(r"(the .+?) between (the .+?) and (the .+)", t):
        a = _the_one(objects, _parse_desc(m.group(2), categories), text)
        b = _the_one(objects, _parse_desc(m.group(3), categories), text)
        lo, hi = sorted((u(a), u(b)))
        found = [
            o for o in _matching(objects, _parse_desc(m.group(1), categories)) if o not in (a, b)
        ]
        return [o for o in found if lo < u(o) < hi], False
    if m := re.fullmatch(r"(the .+?) (to the left of|to the right of|behind) (the .+)", t):
        anchor = _the_one(objects, _parse_desc(m.group(3), categories), text)
        desc, plural = _desc_any_number(m.group(1), categories)
        found = [o for o in _matching(objects, desc) if o is not anchor]
        if m.group(2) == "to the left of":
            return [o for o in found if u(o) < u(anchor)], plural
        if m.group(2) == "to the right of":
            return [o for o in found if u(o) > u(anchor)], plural

        def overlap(o):
            a, b = o.bbox2D_tight, anchor.bbox2D_tight
            return min(a[2], b[2]) - max(a[0], b[0])

        return [o for o in found if dist(o) > dist(anchor) and overlap(o) > 0], plural
    return _matching(objects, _parse_desc(t, categories)), False


def _named_categories(text: str, categories: list[str]) -> set[str]:
    """Every category a caption names (targets and anchors, singular or plural)."""
    words = text.lower().rstrip(".?").split(" ")
    named = set()
    for start in range(len(words)):
        for stop in (start + 1, start + 2):
            phrase = " ".join(words[start:stop])
            if phrase in categories:
                named.add(phrase)
                continue
            with contextlib.suppress(AssertionError):  # not a plural of a category
                named.add(_singular(phrase, categories))
    return named


def _check_captions(ds) -> set[str]:
    """Every caption denotes exactly its targets under the independent reading; its relations."""
    relations = set()
    for query in [q for q in ds.queries if q.type == "caption"]:
        image = ds.image(query.image_id)
        found, plural = resolve_caption(query.text, image, ds.info.categories)
        assert sorted(o.object_id for o in found) == sorted(query.target_object_ids), query.text
        assert plural == query.is_multi_target, query.text
        assert all(o.category_name == query.answer for o in found), query.text
        relations.add(query.extra["relation"])
    return relations


def test_every_caption_picks_exactly_its_target(synth_dir):
    ds = read_dataset(synth_dir)
    captions = [q for q in ds.queries if q.type == "caption"]
    assert len(captions) >= 16
    assert not any(q.is_negative or q.is_multi_target for q in ds.queries)  # off by default
    for query in captions:
        assert query.answer == ds.target(query).category_name
    relations = _check_captions(ds)
    assert len(relations) >= 3, relations


def test_negative_and_multi_target_queries_are_verified(synth_more_dir):
    ds = read_dataset(synth_more_dir)
    negatives = [q for q in ds.queries if q.is_negative]
    multi = [q for q in ds.queries if q.is_multi_target]
    assert len(negatives) == 2 * len(ds.images)  # an absent category or need always exists
    assert len(multi) >= 8
    relations = _check_captions(ds)  # negatives resolve to nothing, multi to all targets
    assert {"left_of", "all"} <= relations
    assert len({q.extra["negative"] for q in negatives}) >= 3
    assert len({q.extra["relation"] for q in multi}) >= 2
    needs = {n.key: n.categories for n in NEEDS}
    novel = set(ds.info.novel_categories)
    for query in negatives:
        image = ds.image(query.image_id)
        present = {o.category_name for o in image.objects}
        assert query.type in ("caption", "question")
        assert query.box_prompt is None and query.point_prompt is None
        assert query.novel_category == (query.answer in novel)
        if query.type == "question":
            assert needs[query.extra["need"]] == (query.answer,)
            assert query.answer not in present, query.text
        elif query.extra["negative"] == "absent":
            assert query.answer not in present, query.text
        else:  # wrong colour, size or relation: the category is there, just not like that
            assert query.answer in present, query.text
        for anchor_id in query.extra.get("anchor_object_ids", []):
            image.object_by_id(anchor_id)
    for query in multi:
        targets = ds.targets(query)
        assert len(targets) >= 2 and query.type == "caption"
        assert all(t.visibility >= 0.3 and t.truncation <= 0.5 for t in targets), query.text
        assert query.novel_category == (query.answer in novel)


def test_training_queries_never_name_a_novel_category(synth_more_dir):
    ds = read_dataset(synth_more_dir)
    novel = set(ds.info.novel_categories)
    train = [q for q in ds.queries if q.split == "train"]
    assert len(train) >= 20
    for query in train:
        assert query.answer not in novel, query.text
        if query.type == "caption":
            assert not _named_categories(query.text, ds.info.categories) & novel, query.text
        for obj in ds.targets(query):
            assert obj.category_name not in novel, query.text


def test_new_kinds_leave_the_other_queries_unchanged(synth_dir, synth_more_dir):
    plain, more = read_dataset(synth_dir), read_dataset(synth_more_dir)
    assert (synth_dir / "images.jsonl").read_bytes() == (
        synth_more_dir / "images.jsonl"
    ).read_bytes()
    by_id = {q.query_id: q for q in more.queries}
    for query in plain.queries:
        other = by_id[query.query_id]
        assert (other.text, other.target_object_ids) == (query.text, query.target_object_ids)
    info = json.loads((synth_dir / "dataset.json").read_text())
    assert "negatives_per_image" not in info["generator"]["config"]["queries"]
    info = json.loads((synth_more_dir / "dataset.json").read_text())
    assert info["generator"]["config"]["queries"]["negatives_per_image"] == 2


def test_questions_prompts_and_splits(synth_dir):
    ds = read_dataset(synth_dir)
    needs = {n.key: n.categories for n in NEEDS}
    novel = set(ds.info.novel_categories)
    assert len(novel) == round(0.2 * len(ds.info.categories))
    assert {q.type for q in ds.queries} == {"caption", "question", "box_prompt", "point_prompt"}
    for query in ds.queries:
        image = ds.image(query.image_id)
        target = ds.target(query)
        assert query.camera_group == image.camera_group
        assert query.novel_category == (target.category_name in novel)
        if query.split == "train":
            assert not query.novel_category, query.query_id
        if query.type == "question":
            serving = [o for o in image.objects if o.category_name in needs[query.extra["need"]]]
            assert serving == [target], query.text
        if query.type == "point_prompt":
            u, v = query.point_prompt
            x1, y1, x2, y2 = target.bbox2D_tight
            assert x1 <= u <= x2 and y1 <= v <= y2
        if query.type == "box_prompt":
            box = query.box_prompt
            inter_w = min(box[2], target.bbox2D_tight[2]) - max(box[0], target.bbox2D_tight[0])
            assert inter_w > 0


def test_novel_categories_are_seeded_and_cover_both_scenes():
    a, b = novel_categories(0, 0.2), novel_categories(0, 0.2)
    assert a == b and len(a) == 5
    scenes = {s for c in CATEGORIES if c.name in a for s in c.scenes}
    assert scenes == {"indoor", "street"}
    assert novel_categories(0, 0.0) == []


def test_generated_file_with_a_bad_line_names_file_and_line(tmp_path):
    root = generate_dataset(
        SynthConfig(num_images=2, seed=1, camera_groups=("vga_wide",)),
        tmp_path / "d",
        progress=False,
    )
    lines = (root / "queries.jsonl").read_text().splitlines()
    data = json.loads(lines[2])
    data["target_object_id"] = "nope"
    lines[2] = json.dumps(data)
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:3: target_object_id 'nope'"):
        read_dataset(root)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"camera_groups": ("gopro",)}, r"unknown \['gopro'\]; available"),
        ({"novel_fraction": 1.5}, r"novel_fraction must be in \[0, 1\)"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions must be 3 shares"),
        ({"indoor_objects": (4, 2)}, "indoor_objects must be"),
        ({"num_images": -1}, "num_images must be >= 0"),
        ({"image_suffix": ".bmp"}, "image_suffix must be"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SynthConfig(**kwargs)


def test_query_config_errors():
    with pytest.raises(
        ConfigError, match=r"QueryConfig.negatives_per_image must be an integer >= 0"
    ):
        QueryConfig(negatives_per_image=-1)
    with pytest.raises(ConfigError, match=r"multi_target_per_image must be an integer >= 0"):
        QueryConfig(multi_target_per_image=1.5)


def test_cli_synth_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "cli"
    assert llmi3d_main(["data", "synth", "--out", str(out), "--num-images", "2", "--seed", "3",
                        "--camera-groups", "vga_normal", "--no-progress"]) == 0  # fmt: skip
    assert "wrote 2 images" in capsys.readouterr().out
    assert len(read_dataset(out).images) == 2
    more = tmp_path / "cli_more"
    assert llmi3d_main(["data", "synth", "--out", str(more), "--num-images", "2", "--seed", "3",
                        "--camera-groups", "vga_normal", "--no-progress", "--negatives-per-image",
                        "2", "--multi-target-per-image", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert sum(q.is_negative for q in read_dataset(more).queries) == 4
    assert llmi3d_main(["data", "synth", "--out", str(tmp_path / "x"),
                        "--negatives-per-image", "-1"]) == 2  # fmt: skip
    assert "negatives_per_image must be an integer >= 0" in capsys.readouterr().err
    # a second run into the same directory is refused without --overwrite
    assert llmi3d_main(["data", "synth", "--out", str(out), "--num-images", "1"]) == 2
    assert "already holds" in capsys.readouterr().err
    sheet = tmp_path / "sheet.png"
    assert llmi3d_main(["data", "contact-sheet", str(out), "--out", str(sheet), "--cols", "2"]) == 0
    import cv2

    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[1] > 600


def test_contact_sheet_errors(tmp_path):
    from llmi3d_core.data.contact_sheet import contact_sheet

    with pytest.raises(InvalidInputError, match="num must be >= 1"):
        contact_sheet(tmp_path, num=0)
    with pytest.raises(DataFormatError, match=r"dataset\.json: not found"):
        contact_sheet(tmp_path)
