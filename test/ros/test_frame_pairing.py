"""StampPairer: newest image wins, paired with the nearest CameraInfo within slop."""

from __future__ import annotations

import pytest

from llmi3d_ros.frame_pairing import StampPairer

MS = 1_000_000


def test_pairs_within_slop_and_keeps_newest() -> None:
    """An image pairs with the nearest info; a later image replaces it."""
    pairer: StampPairer[str, str] = StampPairer(slop_ns=10 * MS)
    assert pairer.add_info(100 * MS, "info100") is None
    pair = pairer.add_image(105 * MS, "img105")
    assert pair is not None and (pair.image, pair.info, pair.sequence) == ("img105", "info100", 1)
    pairer.add_info(200 * MS, "info200")
    pair = pairer.add_image(198 * MS, "img198")
    assert pair is not None and pair.info == "info200" and pair.sequence == 2
    assert pairer.latest is pair


def test_image_waits_for_its_info() -> None:
    """An image with no matching info yet is paired when the info arrives."""
    pairer: StampPairer[str, str] = StampPairer(slop_ns=5 * MS)
    pairer.add_info(0, "old")
    assert pairer.add_image(100 * MS, "img") is None
    assert pairer.latest is None
    pair = pairer.add_info(102 * MS, "new")
    assert pair is not None and pair.info == "new"


def test_older_image_is_dropped_and_clear_forgets() -> None:
    """Out-of-order images older than the latest pair are ignored; clear() resets."""
    pairer: StampPairer[str, str] = StampPairer(slop_ns=0)
    pairer.add_info(10, "a")
    pairer.add_info(5, "b")
    assert pairer.add_image(10, "new") is not None
    assert pairer.add_image(5, "old") is None
    assert pairer.latest is not None and pairer.latest.image == "new"
    pairer.clear()
    assert pairer.latest is None and not pairer.has_info


def test_negative_slop_is_refused() -> None:
    """A negative slop is a configuration error."""
    with pytest.raises(ValueError, match="slop_ns must be >= 0"):
        StampPairer(slop_ns=-1)
