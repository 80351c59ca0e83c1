"""`features.views` through the stages: the features stage caches views of train and val images
only, and the feature strategies fit on them and still learn."""

from __future__ import annotations

from pathlib import Path

import pytest

from graft.core.layout import Layout
from graft.data.manifest import read_manifest
from graft.embeddings.store import FeaturesError, load_embeddings, read_store, store_path, view_keys
from graft.stages import features, finetune
from tests.fixtures import copy_stage_outputs, make_split_project, views_params


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = make_split_project(tmp_path_factory.mktemp("views"), {"train": 4, "val": 2,
                                                                   "test": 2})
    features.run(views_params(), layout)
    return layout.root


@pytest.fixture()
def layout(base: Path, tmp_path: Path) -> Layout:
    return copy_stage_outputs(base, tmp_path)


def test_features_stage_caches_views_of_train_and_val_images_only(layout: Layout) -> None:
    params = views_params()
    store = read_store(store_path(layout, params))
    df = read_manifest(layout.manifest)
    for row in df.itertuples():
        has = [key in store for key in view_keys(row.sha256, 2)]
        assert all(has) if row.split in ("train", "val") else not any(has)
    again = features.run(params, layout)
    assert again["n_computed"] == 0 and again["views"] == 2
    assert read_store(store_path(layout, params)).keys() == store.keys()
    rows = df[df["split"] != "test"]
    feats, views = load_embeddings(layout, params, rows)
    assert feats.shape == (len(rows), 1280) and views.shape == (len(rows), 2, 1280)
    with pytest.raises(FeaturesError, match="augmented view"):
        load_embeddings(layout, views_params(views=3), rows)


@pytest.mark.parametrize("strategy", ["linear_probe", "prototype"])
def test_feature_strategies_fit_on_views_and_still_learn(layout: Layout, strategy: str) -> None:
    metrics = finetune.run(views_params(strategy=strategy), layout)
    assert metrics["train_accuracy"] >= 0.9 and metrics["val_accuracy"] >= 0.8  # chance 1/3
