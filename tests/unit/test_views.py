"""Augmented views (`features.views`, graft.views): made reproducibly, cached like images, fitted
on as extra rows, and never leaked into the rows a setting is scored on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graft import auto, feature_fit, features, finetune
from graft.backbones import get_spec
from graft.config import params_from_dict
from graft.layout import Layout
from graft.manifest import read_manifest
from graft.probe import select_c
from graft.views import make_views, view_keys, with_views
from tests.conftest import copy_stage_outputs, make_split_project

SIZE = 32
BACKBONE = "efficientnet_lite0"


def tiny_params(views: int = 2, **finetune_section: object):
    return params_from_dict({"features": {"backbone": BACKBONE, "image_size": SIZE,
                                          "views": views},
                             "finetune": {"c_grid": [0.1, 1.0], **finetune_section}})


def test_views_are_the_mirror_then_reproducible_draws() -> None:
    pre = get_spec(BACKBONE).preprocessing(SIZE)
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    shas = ["a" * 64, "b" * 64]
    views = make_views(images, shas, 3, pre)
    assert views.shape == (6, 3, SIZE, SIZE) and views.dtype == torch.float32
    mirror = (images[0].flip(-1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(views[0], mirror)  # view 1 of image 0
    torch.testing.assert_close(make_views(images, shas, 3, pre), views)  # same content, same views
    assert not torch.equal(views[1], views[2])  # draws differ by view number
    assert view_keys("a" * 64, 2) == ["a" * 64 + ":1", "a" * 64 + ":2"]


def test_with_views_appends_rows_with_their_labels() -> None:
    x, y = np.arange(6.0).reshape(3, 2), np.array([0, 1, 2])
    views = np.stack([x + 10, x + 20], axis=1)  # (3, 2, 2)
    xs, ys = with_views(x, y, views)
    assert xs.shape == (9, 2) and ys.tolist() == [0, 1, 2, 0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(xs[3], x[0] + 10)
    assert with_views(x, y, None)[0] is x


def noise_with_copies(n_per_class: int = 8, dim: int = 200, seed: int = 0):
    """Labels carry no signal; each row's views are exact copies of it. Scoring a row after
    fitting on its own copies would look near-perfect, so held-out accuracy well above chance
    means views leaked across the split."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    x = rng.normal(size=(len(y), dim))
    return x, y, np.stack([x, x], axis=1)


def test_cross_validation_keeps_views_with_their_rows() -> None:
    x, y, views = noise_with_copies()
    empty = x[:0]
    selection = select_c(x, y, empty, y[:0], [100.0], "none", 3, 0, views)
    assert selection.method == "single" or selection.accuracy < 0.7
    selection = select_c(x, y, empty, y[:0], [10.0, 100.0], "none", 3, 0, views)
    assert selection.method == "cv" and selection.accuracy < 0.7  # chance 1/3; leaked ≈ 1
    settings = feature_fit.candidates("svm", ["rbf"], [100.0], [1.0])
    fitted = feature_fit.fit_strategy("svm", x, y, np.ones(len(y), bool), 3, "none", settings,
                                      "none", 0, views)
    assert fitted.selection == "cv" and fitted.val_accuracy < 0.7
    p = tiny_params().finetune
    scored = auto.score_candidates([{"strategy": "linear_probe", "feature_norm": "none",
                                     "C": 100.0}], x, y, np.ones(len(y), bool), 3, p,
                                   "repeated_cv", float("inf"), views)
    assert scored[0]["score"] < 0.7


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = make_split_project(tmp_path_factory.mktemp("views"), {"train": 4, "val": 2,
                                                                   "test": 2})
    features.run(tiny_params(), layout)
    return layout.root


@pytest.fixture()
def layout(base: Path, tmp_path: Path) -> Layout:
    return copy_stage_outputs(base, tmp_path)


def test_features_stage_caches_views_of_train_and_val_images_only(layout: Layout) -> None:
    params = tiny_params()
    store = features.read_store(features.store_path(layout, params))
    df = read_manifest(layout.manifest)
    for row in df.itertuples():
        has = [key in store for key in view_keys(row.sha256, 2)]
        assert all(has) if row.split in ("train", "val") else not any(has)
    again = features.run(params, layout)
    assert again["n_computed"] == 0 and again["views"] == 2
    assert features.read_store(features.store_path(layout, params)).keys() == store.keys()
    rows = df[df["split"] != "test"]
    assert features.load_views(layout, params, rows).shape == (len(rows), 2, 1280)
    with pytest.raises(features.FeaturesError, match="augmented view"):
        features.load_views(layout, tiny_params(views=3), rows)


@pytest.mark.parametrize("strategy", ["linear_probe", "prototype"])
def test_feature_strategies_fit_on_views_and_still_learn(layout: Layout, strategy: str) -> None:
    metrics = finetune.run(tiny_params(strategy=strategy), layout)
    assert metrics["train_accuracy"] >= 0.9 and metrics["val_accuracy"] >= 0.8  # chance 1/3
