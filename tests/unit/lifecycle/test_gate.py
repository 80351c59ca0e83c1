"""The champion/challenger gate (graft.lifecycle.gate): decision rules, the evaluation set, scoring
real checkpoints."""

from __future__ import annotations

import pytest

from graft.data.manifest import write_manifest
from graft.lifecycle import gate
from graft.lifecycle.registry import MANIFEST, TESTSET, Version
from tests.fixtures import constant_checkpoint, make_pattern_images, manifest_frame

TRUE = ["a"] * 10 + ["b"] * 10 + ["c"] * 10


def predictions(wrong: dict[str, int]) -> list[str]:
    """TRUE with the first `wrong[c]` images of class c predicted as another class."""
    out, seen = [], {}
    for label in TRUE:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] > wrong.get(label, 0) else ("b" if label == "a" else "a"))
    return out


def score(wrong: dict[str, int]) -> gate.Score:
    return gate.score_predictions(TRUE, predictions(wrong))


def test_score_predictions_gives_accuracy_and_per_class_recall():
    s = score({"a": 2, "c": 5})
    assert s.n == 30 and s.accuracy == pytest.approx(23 / 30)
    assert s.recall == {"a": 0.8, "b": 1.0, "c": 0.5}


def test_a_better_challenger_is_promoted():
    d = gate.decide(score({"a": 3, "b": 3, "c": 3}), score({"a": 2, "b": 2, "c": 2}),
                    min_gain=0.01, max_class_drop=0.05)
    assert d.promote and d.gain == pytest.approx(0.1)
    assert "passes" in d.reasons[0] and d.reasons[-1] == "promote the challenger"


def test_a_worse_challenger_is_not_promoted():
    d = gate.decide(score({"a": 1}), score({"a": 2, "b": 2}), min_gain=0.0, max_class_drop=0.5)
    assert not d.promote
    assert "fails" in d.reasons[0] and d.reasons[-1] == "keep the champion"


def test_a_gain_below_min_gain_is_not_enough():
    d = gate.decide(score({"a": 2}), score({"a": 1}), min_gain=0.05, max_class_drop=0.05)
    assert not d.promote and "needed ≥ +5.0" in d.reasons[0]
    tie = gate.decide(score({"a": 2}), score({"a": 1}), min_gain=1 / 30, max_class_drop=0.05)
    assert tie.promote  # exactly min_gain passes


def test_better_accuracy_with_one_collapsed_class_is_not_promoted():
    champion = score({"a": 3, "b": 3, "c": 3})  # 70%, every class 0.7
    challenger = score({"a": 0, "b": 0, "c": 6})  # 80%, but c falls from 0.7 to 0.4
    d = gate.decide(champion, challenger, min_gain=0.01, max_class_drop=0.1)
    assert challenger.accuracy > champion.accuracy and not d.promote
    assert d.class_drops["c"] == pytest.approx(0.3)
    assert any("class 'c'" in r and "falls 30.0 points" in r for r in d.reasons)


def test_without_a_champion_the_challenger_is_promoted():
    d = gate.decide(None, score({"a": 9}), min_gain=0.5, max_class_drop=0.0)
    assert d.promote and "no champion yet" in d.reasons[0]


def test_evaluation_set_joins_old_and_new_test_images_and_leaves_out_leaks(tmp_path):
    old = manifest_frame([("t1", "a", "test"), ("t2", "b", "test"), ("t3", "a", "test"),
                          ("r1", "a", "train")])
    new = manifest_frame([("t1", "a", "test"), ("t3", "b", "train"), ("n1", "b", "test"),
                          ("r1", "a", "train")])
    champion = Version(tmp_path / "champion")  # its manifest snapshot and test image copies
    write_manifest(champion.folder / MANIFEST, old)
    ev = gate.evaluation_set(champion, new, tmp_path / "manifest.csv")
    assert ev.paths == [tmp_path / "images/t1.png", tmp_path / "images/n1.png",
                        tmp_path / "champion" / TESTSET / "t2.png"]
    assert ev.labels == ["a", "b", "b"]
    assert any("1 champion test images are in the challenger's train/val" in n for n in ev.notes)


def test_evaluation_set_needs_test_images(tmp_path):
    with pytest.raises(gate.GateError, match="manifest.csv: no test images"):
        gate.evaluation_set(None, manifest_frame([("r1", "a", "train")]),
                           tmp_path / "manifest.csv")


def test_score_checkpoint_reads_the_image_files(tmp_path):
    images = make_pattern_images(tmp_path / "img", per_class=2, size=32)
    paths = sorted(images.glob("*/*.png"))
    ev = gate.EvaluationSet(paths, [p.parent.name for p in paths], [])
    ckpt = constant_checkpoint(tmp_path / "m.pt", ["circle", "square", "stripes"], 2)
    s = gate.score_checkpoint(ckpt, ev, batch_size=4)
    assert s.n == 6 and s.accuracy == pytest.approx(1 / 3)
    assert s.recall == {"circle": 0.0, "square": 0.0, "stripes": 1.0}
