"""The baselines are trained once per manifest, baseline settings and code: a rerun with the same
inputs gets the same results back without training; any input they depend on makes a new entry;
an entry that cannot be read is trained again, never trusted."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch

from graft.data.manifest import read_manifest
from graft.evaluation import baseline_cache
from graft.evaluation.baselines import BASELINES
from tests.fixtures import CLASSES, evaluate_params, make_evaluate_project

CPU = torch.device("cpu")


@pytest.fixture()
def project(tmp_path):
    layout = make_evaluate_project(tmp_path)
    return layout, read_manifest(layout.manifest), evaluate_params().evaluate


def run(layout, df, p):
    return baseline_cache.cached_baselines(p, df, layout.manifest, CLASSES, CPU,
                                           layout.baselines)


def refuse_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the baselines were trained again")

    monkeypatch.setattr(baseline_cache, "train_baselines", refuse)


def test_same_inputs_give_the_kept_results_without_training(project, monkeypatch):
    layout, df, p = project
    first, reused = run(layout, df, p)
    assert reused is False
    refuse_training(monkeypatch)
    # bootstrap and batch_size do not change a baseline: still the kept entry
    again, reused = run(layout, df, dataclasses.replace(p, bootstrap=50, batch_size=3))
    assert reused is True
    for name in BASELINES:
        np.testing.assert_array_equal(again[name].proba, first[name].proba)
        assert again[name].info == first[name].info
        x = torch.zeros(2, 3, p.baseline_image_size, p.baseline_image_size)
        with torch.inference_mode():
            np.testing.assert_allclose(again[name].model(x).numpy(),
                                       first[name].model.eval()(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("change", ["param", "label", "image"])
def test_what_a_baseline_depends_on_makes_a_new_entry(project, change):
    layout, df, p = project
    run(layout, df, p)
    if change == "param":
        p = dataclasses.replace(p, cnn_epochs=p.cnn_epochs + 1)
    elif change == "label":
        df = df.copy()
        row = df.index[df["split"] == "train"][0]
        df.loc[row, "label"] = next(c for c in CLASSES if c != df.loc[row, "label"])
    else:
        df = df.copy()
        df.loc[df.index[df["split"] == "test"][0], "sha256"] = "0" * 64
    _, reused = run(layout, df, p)
    assert reused is False
    assert len([e for e in layout.baselines.iterdir() if e.is_dir()]) == 2


@pytest.mark.parametrize("damage", ["proba", "pickled checkpoint", "missing file", "fifo"])
def test_an_unreadable_entry_is_trained_again_and_rewritten(project, damage):
    layout, df, p = project
    run(layout, df, p)
    (entry,) = [e for e in layout.baselines.iterdir() if e.is_dir()]
    if damage == "proba":
        (entry / "proba.npz").write_bytes(b"not an npz")
    elif damage == "fifo":  # a read would block forever
        (entry / "proba.npz").unlink()
        os.mkfifo(entry / "proba.npz")
    elif damage == "pickled checkpoint":  # a model file is data: a pickle is never loaded
        (entry / "small_cnn.pt").write_bytes(pickle.dumps({"state": "x"}))
    else:
        (entry / "pixels_logreg.pt").unlink()
    results, reused = run(layout, df, p)
    assert reused is False and set(results) == set(BASELINES)
    _, reused = run(layout, df, p)
    assert reused is True


def test_only_the_most_recent_entries_are_kept(project):
    layout, df, p = project
    for seed in range(baseline_cache.KEEP + 1):
        run(layout, df, dataclasses.replace(p, seed=seed, cnn_epochs=1))
    assert len([e for e in layout.baselines.iterdir() if e.is_dir()]) == baseline_cache.KEEP
    assert not [e for e in layout.baselines.iterdir() if e.name.startswith(".")]


@pytest.mark.parametrize("intruder", ["file", "symlink", "symlink to an entry"])
def test_a_file_or_link_where_an_entry_belongs_is_replaced_and_nothing_outside_touched(
        project, tmp_path, intruder):
    layout, df, p = project
    entry = layout.baselines / baseline_cache.key(p, df, CLASSES, CPU)
    layout.baselines.mkdir(parents=True)
    outside = tmp_path / "outside"
    if intruder == "symlink to an entry":  # a complete entry, but not this project's own
        run(layout, df, p)
        entry.rename(outside)
    else:
        outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    os.utime(outside, (1, 1))
    if intruder == "file":
        entry.write_text("not an entry")
    else:
        entry.symlink_to(outside, target_is_directory=True)
    _, reused = run(layout, df, p)
    assert reused is False and entry.is_dir() and not entry.is_symlink()
    assert (outside / "keep.txt").read_text() == "mine" and outside.stat().st_mtime == 1
