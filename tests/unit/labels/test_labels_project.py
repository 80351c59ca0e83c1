"""The labels room on a real tiny project (pattern images, Lite0 embeddings at 32 px): the audit
stage ranks a planted wrong label first and finds a planted near-copy across train/test; evaluate's
figures leave that copy out; `graft suggest` ranks only unlabelled images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from graft.core.files import sha256_file
from graft.core.layout import Layout
from graft.data.manifest import UNLABELED, read_manifest, write_manifest
from graft.labels import leakage
from graft.labels.duplicates import reencode
from graft.labels.report import AuditError
from graft.labels.suggest import SuggestError, suggest_for_project
from tests.fixtures import make_pattern_images, tiny_params

pytestmark = pytest.mark.usefixtures("one_thread")

FLIPPED = "images/train/circle/circle_001.png"  # a circle labelled "square"
SOURCE = "images/train/square/square_002.png"  # re-encoded into the test split as COPY
COPY = "images/test/square/copy_of_square_002.jpg"
PER_SPLIT = {"train": 6, "test": 3, UNLABELED: 8}


def labels_params(**sections):
    """Lite0 at 32 px; the audit calibrates on the project's 18 training images."""
    audit = {"calibration_images": 18, **sections.pop("audit", {})}
    return tiny_params(audit=audit, suggest={"n": 4, **sections.pop("suggest", {})}, **sections)


def _rows(layout: Layout) -> list[dict]:
    rows = []
    for seed, (split, per_class) in enumerate(PER_SPLIT.items()):
        folder = layout.prepared / "images" / split
        make_pattern_images(folder, per_class, seed=seed, prefix="u" if split == UNLABELED else "")
        for path in sorted(folder.rglob("*.png")):
            rel = path.relative_to(layout.prepared).as_posix()
            label = "" if split == UNLABELED else path.parent.name
            rows.append({"path": rel, "label": "square" if rel == FLIPPED else label,
                         "split": split})
    reencode(Image.open(layout.prepared / SOURCE), layout.prepared / COPY, 1.25, 80)
    rows.append({"path": COPY, "label": "square", "split": "test"})
    return rows


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train 6 + test 3 (+ the planted copy) per class, 8 unlabelled per class, embedded."""
    from graft.stages import features

    layout = Layout(tmp_path_factory.mktemp("labels-base"))
    df = pd.DataFrame(_rows(layout))
    files = [layout.prepared / p for p in df["path"]]
    df["sha256"] = [sha256_file(f) for f in files]
    df["width"] = [Image.open(f).width for f in files]
    df["height"] = [Image.open(f).height for f in files]
    df["mode"] = "RGB"
    write_manifest(layout.manifest, df)
    features.run(labels_params(), layout)
    return layout.root


@pytest.fixture()
def project(base: Path, tmp_path: Path) -> Layout:
    shutil.copytree(base / "data", tmp_path / "data")
    shutil.copytree(base / "metrics", tmp_path / "metrics")
    return Layout(tmp_path)


def _prepared(layout: Layout, rel: str) -> str:
    return str(layout.prepared / rel)


def test_audit_ranks_the_planted_flip_first_and_finds_the_planted_copy(project: Layout):
    from graft.stages import audit

    metrics = audit.run(labels_params(), project)

    issues = pd.read_csv(project.label_issues)
    assert list(issues.columns) == ["path", "label", "suggested", "score"]
    assert issues.loc[0, "path"] == _prepared(project, FLIPPED)
    assert (issues.loc[0, "label"], issues.loc[0, "suggested"]) == ("square", "circle")
    assert (issues["score"].diff().dropna() >= 0).all()  # most suspicious first
    pairs = pd.read_csv(project.near_duplicates)
    assert list(pairs.columns) == ["path_a", "split_a", "path_b", "split_b", "similarity"]
    planted = pairs.loc[pairs["path_a"] == _prepared(project, COPY)]
    assert planted[["split_a", "path_b", "split_b"]].values.tolist() == [
        ["test", _prepared(project, SOURCE), "train"]]
    assert not pairs["path_a"].str.contains("/unlabeled/").any()  # only labelled images
    assert not issues["path"].str.contains("/unlabeled/").any()
    assert metrics["test_near_copies"] >= 1 and metrics["label_issues"] >= 1
    assert metrics["n_labelled"] == 3 * (6 + 3) + 1
    assert "Suspected label errors" in project.report("audit.md").read_text()


def test_audit_stops_the_pipeline_when_told_to(project: Layout):
    from graft.stages import audit

    with pytest.raises(AuditError, match="audit.on_label_issues"):
        audit.run(labels_params(audit={"on_label_issues": "fail"}), project)
    assert project.label_issues.exists()  # the reports are written first


def test_evaluate_figures_leave_the_near_copies_out(project: Layout):
    from graft.stages import audit

    audit.run(labels_params(), project)
    pairs = leakage.read_pairs(project.near_duplicates)
    test_paths = [_prepared(project, COPY), "a.png", "b.png"]
    y = np.array([0, 1, 1])
    proba = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # right on the copy only + one more
    out = leakage.without_near_copies(project.near_duplicates, test_paths, y, proba, 50, 0)
    assert leakage.copies_training(test_paths, pairs).tolist() == [True, False, False]
    assert out["test_near_copies"] == 1 and out["n_test_without_near_copies"] == 2
    assert out["accuracy_without_near_copies"] == pytest.approx(0.5)
    missing = leakage.without_near_copies(project.root / "none.csv", test_paths, y, proba, 50, 0)
    assert missing["test_near_copies"] is None


def test_suggest_ranks_only_unlabelled_images(project: Layout):
    method, table = suggest_for_project(labels_params(), project, n=6)

    df = read_manifest(project.manifest)
    unlabelled = {_prepared(project, p) for p in df.loc[df["split"] == UNLABELED, "path"]}
    assert method == "margin"  # 6 labels per class: the model's doubt is trusted (cold_start 3)
    assert len(table) == 6 and set(table["path"]) <= unlabelled
    assert table["rank"].tolist() == list(range(1, 7))
    written = pd.read_csv(project.suggestions, keep_default_na=False)
    assert list(written.columns) == ["rank", "path", "score", "predicted", "reason"]
    assert written["path"].tolist() == table["path"].tolist()
    assert set(written["predicted"]) <= {"circle", "square", "stripes"}


def test_suggest_from_zero_labels_picks_one_typical_image_per_group(project: Layout):
    df = read_manifest(project.manifest)
    write_manifest(project.manifest, df.loc[df["split"].isin(["test", UNLABELED])])
    method, table = suggest_for_project(labels_params(suggest={"min_cluster": 2}), project, n=3)

    assert method == "kmeans"
    kinds = {Path(p).name.split("_")[0] for p in table["path"]}
    assert kinds == {"ucircle", "usquare", "ustripes"}  # one of each kind: diverse
    assert table["reason"].str.contains("none labelled yet").all()


def test_suggest_says_what_to_do_without_unlabelled_images(project: Layout):
    df = read_manifest(project.manifest)
    write_manifest(project.manifest, df.loc[df["split"] != UNLABELED])
    with pytest.raises(SuggestError, match="ingest.unlabeled_path"):
        suggest_for_project(labels_params(), project)


def test_graft_suggest_prints_the_top_and_writes_the_csv(project: Layout):
    import yaml

    from graft.cli import app

    params = project.root / "params.yaml"
    params.write_text(yaml.safe_dump(labels_params().to_dict()))
    result = CliRunner().invoke(app, ["suggest", "--root", str(project.root), "--n", "2"])
    assert result.exit_code == 0, result.output
    assert "2 image(s) to label next" in result.output
    assert "  1. " in result.output and str(project.suggestions) in result.output
    assert len(pd.read_csv(project.suggestions)) == 2
    bad = CliRunner().invoke(app, ["suggest", "--root", str(project.root), "--n", "0"])
    assert bad.exit_code == 1 and "--n: must be at least 1" in bad.output


def test_the_retrain_report_lists_the_next_images_to_label(project: Layout):
    import yaml

    from graft.lifecycle.report import next_to_label_lines
    from graft.lifecycle.retrain import next_to_label

    params = project.root / "params.yaml"
    params.write_text(yaml.safe_dump(labels_params().to_dict()))
    assert next_to_label(project) == {}  # no ingest.unlabeled_path: no section
    params.write_text(yaml.safe_dump(labels_params(ingest={"unlabeled_path": "pool"}).to_dict()))
    found = next_to_label(project)
    assert len(found["rows"]) == 4 and found["file"] == str(project.suggestions)
    lines = next_to_label_lines(found)
    assert "## Next images to label" in lines and sum(ln.startswith("| 1 |") for ln in lines) == 1
    assert next_to_label_lines({"note": "no images"})[-1] == "None: no images"


def test_unlabelled_rows_never_reach_training(project: Layout):
    from graft.strategies.base import load_inputs

    inputs = load_inputs(labels_params(), project)
    assert set(inputs.rows["split"]) == {"train"} and len(inputs.rows) == 3 * 6
    assert inputs.data.feats.shape[0] == 3 * 6 and inputs.classes == ["circle", "square",
                                                                       "stripes"]
