"""graft.data.prepare: stratified split assignment (the ingest stage's library part)."""

from __future__ import annotations

from graft.core.config import IngestParams
from graft.data.prepare import assign_splits
from graft.data.sources import Candidate


def test_test_size_caps_stratified():
    cands = [Candidate(label, f"{label}{i}", "x", f"{i}.png", "test" if i < 6 else None)
             for label, n in (("a", 12), ("b", 12), ("c", 24)) for i in range(n)]
    # a, b: 6 official test images each; c: 6 too. Cap 9 → 3 each (equal class shares).
    out = assign_splits(cands, IngestParams(test_size=9, val_per_class=1, shots_per_class=None))
    test = [c.label for c, s in zip(cands, out, strict=True) if s == "test"]
    assert sorted(test) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert all(c.split == "test" for c, s in zip(cands, out, strict=True) if s == "test")
    assert out.count("val") == 3 and out.count("train") == 6 + 6 + 18 - 3


def test_a_users_folder_keeps_most_images_for_training():
    """15 images per class with the defaults: test 3, val 2 (val_fraction caps val_per_class),
    train 10; before, val took its 10 and left training 2."""
    cands = [Candidate(label, f"{label}{i}", "x", f"{i}.png", None)
             for label in ("dent", "ok", "scratch") for i in range(15)]
    out = assign_splits(cands, IngestParams(source="folder", shots_per_class=None))
    for label in ("dent", "ok", "scratch"):
        splits = [s for c, s in zip(cands, out, strict=True) if c.label == label]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (10, 2, 3)


def test_a_large_class_still_gets_val_per_class():
    cands = [Candidate("a", f"a{i}", "x", f"{i}.png", None) for i in range(500)]
    out = assign_splits(cands, IngestParams(shots_per_class=10, val_per_class=10))
    assert (out.count("train"), out.count("val"), out.count("test")) == (10, 10, 100)
