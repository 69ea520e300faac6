"""IG3D-Synth: determinism, geometric consistency, verified queries, CLI and contact sheet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from llmi3d_core.cli import main as llmi3d_main
from llmi3d_core.data.format import read_dataset
from llmi3d_core.data.queries import NEEDS
from llmi3d_core.data.synth import SynthConfig, generate_dataset, novel_categories
from llmi3d_core.data.synth_shapes import CATEGORIES, COLORS, build_mesh
from llmi3d_core.errors import ConfigError, DataFormatError, InvalidInputError
from llmi3d_core.geometry import box3d_corners, project


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """A small dataset over every camera group (rooms and streets), made once for the module."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    config = SynthConfig(num_images=16, seed=11, split_fractions=(0.5, 0.25, 0.25))
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

_PREFIXES = ("give me the 3d box of ", "where is ", "show me ", "locate ", "find ")


def _parse_desc(text: str, categories: list[str]) -> tuple[str | None, str | None, str]:
    words = text.split(" ")
    assert words[0] == "the", text
    words = words[1:]
    size = words.pop(0) if words[0] in ("small", "large") else None
    color = words.pop(0) if words[0] in COLORS else None
    category = " ".join(words)
    assert category in categories, f"unknown category {category!r} in {text!r}"
    return size, color, category


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


def resolve_caption(text: str, objects, categories) -> list:
    """Return the objects a caption denotes (the caption is right when this is one object)."""
    t = text.lower().rstrip(".?").strip()
    for prefix in _PREFIXES:
        if t.startswith(prefix):
            t = t[len(prefix) :]
            break

    def dist(o):
        return float(np.linalg.norm(o.center_cam))

    def u(o):
        return float(o.center_2D[0])

    if m := re.fullmatch(r"the (nearest|farthest|largest) (.+)", t):
        found = _matching(objects, _parse_desc("the " + m.group(2), categories))
        key = {
            "nearest": dist,
            "farthest": lambda o: -dist(o),
            "largest": lambda o: -np.prod(o.dimensions),
        }
        best = min(key[m.group(1)](o) for o in found)
        return [o for o in found if key[m.group(1)](o) == best]
    if m := re.fullmatch(r"(the .+?) between (the .+?) and (the .+)", t):
        a = _the_one(objects, _parse_desc(m.group(2), categories), text)
        b = _the_one(objects, _parse_desc(m.group(3), categories), text)
        lo, hi = sorted((u(a), u(b)))
        found = [
            o for o in _matching(objects, _parse_desc(m.group(1), categories)) if o not in (a, b)
        ]
        return [o for o in found if lo < u(o) < hi]
    if m := re.fullmatch(r"(the .+?) (to the left of|to the right of|behind) (the .+)", t):
        anchor = _the_one(objects, _parse_desc(m.group(3), categories), text)
        found = [
            o for o in _matching(objects, _parse_desc(m.group(1), categories)) if o is not anchor
        ]
        if m.group(2) == "to the left of":
            return [o for o in found if u(o) < u(anchor)]
        if m.group(2) == "to the right of":
            return [o for o in found if u(o) > u(anchor)]

        def overlap(o):
            a, b = o.bbox2D_tight, anchor.bbox2D_tight
            return min(a[2], b[2]) - max(a[0], b[0])

        return [o for o in found if dist(o) > dist(anchor) and overlap(o) > 0]
    return _matching(objects, _parse_desc(t, categories))


def test_every_caption_picks_exactly_its_target(synth_dir):
    ds = read_dataset(synth_dir)
    captions = [q for q in ds.queries if q.type == "caption"]
    assert len(captions) >= 16
    relations = set()
    for query in captions:
        objects = ds.image(query.image_id).objects
        found = resolve_caption(query.text, objects, ds.info.categories)
        assert [o.object_id for o in found] == [query.target_object_id], query.text
        assert query.answer == ds.target(query).category_name
        relations.add(query.extra["relation"])
    assert len(relations) >= 3, relations


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


def test_cli_synth_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "cli"
    assert llmi3d_main(["data", "synth", "--out", str(out), "--num-images", "2", "--seed", "3",
                        "--camera-groups", "vga_normal", "--no-progress"]) == 0  # fmt: skip
    assert "wrote 2 images" in capsys.readouterr().out
    assert len(read_dataset(out).images) == 2
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
