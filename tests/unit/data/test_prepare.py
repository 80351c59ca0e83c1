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
