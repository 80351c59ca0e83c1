"""The evaluate stage end to end on a tiny project, and its negative-transfer verdict (the verdict's
rules alone: tests/unit/evaluation/test_compare.py)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image
from torch import nn

from graft.core.files import write_csv
from graft.data.manifest import ManifestError, origins, read_manifest
from graft.evaluation.report import summary_lines
from graft.models.checkpoint import load_checkpoint
from graft.stages import evaluate
from tests.fixtures import CLASSES, EVALUATE_SPLITS, evaluate_params, make_evaluate_project

N_TEST = EVALUATE_SPLITS["test"] * len(CLASSES)
KEYS = {"accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "roc_auc", "roc_auc_ci",
        "per_class", "baselines", "baselines_ci", "transfer_gain", "transfer_gain_ci",
        "best_baseline", "negative_transfer", "n_test", "class_names"}


class ColourModel(nn.Module):
    """Scores each class by the mean of its dominant channel: circle red, square green,
    stripes blue (see tests.fixtures.make_pattern_images). Near-perfect on the pattern set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.mean(dim=(2, 3))  # (N, 3) RGB
        red, green, blue = means.unbind(1)
        return 20 * torch.stack([red - green, green - red, blue - red], dim=1)  # CLASSES order


def test_run_writes_every_declared_output(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path)
    df = read_manifest(layout.manifest)
    test, train = (origins(df[df["split"] == s], layout.manifest) for s in ("test", "train"))
    write_csv(layout.near_duplicates, ["path_a", "split_a", "path_b", "split_b", "similarity"],
              [[test[0], "test", train[0], "train", 0.99]])  # as the audit stage writes it
    result = evaluate.run(evaluate_params(), layout)

    saved = json.loads(layout.metrics("evaluate").read_text())
    assert saved == json.loads(json.dumps(result))
    assert KEYS <= set(saved)
    assert saved["n_test"] == N_TEST and saved["class_names"] == CLASSES
    assert set(saved["baselines"]) == {"pixels_logreg", "small_cnn"}
    for key in ("accuracy", "macro_f1", "roc_auc"):
        lo, hi = saved[f"{key}_ci"]
        assert lo <= saved[key] <= hi
    assert sum(c["support"] for c in saved["per_class"].values()) == N_TEST
    assert saved["transfer_gain"] == pytest.approx(
        saved["accuracy"] - saved["baselines"][saved["best_baseline"]])
    assert (saved["test_near_copies"], saved["n_test_without_near_copies"]) == (1, N_TEST - 1)
    lo, hi = saved["accuracy_without_near_copies_ci"]
    assert lo <= saved["accuracy_without_near_copies"] <= hi
    assert "Without the 1 test image(s)" in layout.report("evaluate.md").read_text()

    with open(layout.plot("confusion.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_TEST  # one row per test image
    assert {r["actual"] for r in rows} == set(CLASSES) and set(rows[0]) == {"actual", "predicted"}
    correct = sum(r["actual"] == r["predicted"] for r in rows)
    assert correct / N_TEST == pytest.approx(saved["accuracy"])
    with Image.open(layout.plot("confusion.png")) as png:
        assert png.format == "PNG" and png.width >= 300
    report = layout.report("evaluate.md").read_text()
    assert "pixels_logreg" in report and "small_cnn" in report and "Verdict" in report


def test_run_is_deterministic_and_leaves_inputs_alone(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path)
    before = layout.manifest.read_bytes(), layout.model.read_bytes()
    first = evaluate.run(evaluate_params(cnn_epochs=2), layout)
    second = evaluate.run(evaluate_params(cnn_epochs=2), layout)
    # the second run scores against the baselines the first trained (graft.evaluation.
    # baseline_cache): the same figures
    assert (first.pop("baselines_reused"), second.pop("baselines_reused")) == (False, True)
    assert first == second
    assert (layout.manifest.read_bytes(), layout.model.read_bytes()) == before


def test_zeroed_head_is_negative_transfer(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path, zero_head=True)  # logits all 0: always class 0
    result = evaluate.run(evaluate_params(), layout)
    assert result["accuracy"] == pytest.approx(1 / len(CLASSES))
    assert result["roc_auc"] == pytest.approx(0.5)  # all scores tied
    assert result["baselines"][result["best_baseline"]] > 0.6  # the easy set is learnable
    assert result["transfer_gain"] < 0 and result["negative_transfer"] is True
    negative = [line for line in summary_lines(result) if "NEGATIVE TRANSFER" in line]
    assert len(negative) == 1 and negative[0].startswith("WARNING")
    assert result["best_baseline"] in negative[0]
    assert "NEGATIVE TRANSFER" in layout.report("evaluate.md").read_text()


@pytest.mark.parametrize("mode", ["warn", "fail"])  # fail is silent when transfer wins
def test_good_model_is_not_negative_transfer(tmp_path, monkeypatch, mode) -> None:
    layout = make_evaluate_project(tmp_path)
    _, meta = load_checkpoint(layout.model)
    monkeypatch.setattr(evaluate, "load_checkpoint", lambda path, **_: (ColourModel(), meta))
    result = evaluate.run(evaluate_params(on_negative_transfer=mode), layout)
    assert result["accuracy"] == 1.0 and result["roc_auc"] == 1.0
    assert result["transfer_gain"] >= 0 and result["negative_transfer"] is False
    assert not any("NEGATIVE TRANSFER" in line for line in summary_lines(result))


def test_unknown_test_label_is_an_error_naming_it(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path, test_labels={"square": "hexagon"})
    with pytest.raises(ManifestError, match="hexagon") as info:
        evaluate.run(evaluate_params(), layout)
    assert str(layout.manifest) in str(info.value)
    assert not layout.metrics("evaluate").exists()


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    layout = make_evaluate_project(tmp_path)
    layout.model.unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        evaluate.run(evaluate_params(), layout)
