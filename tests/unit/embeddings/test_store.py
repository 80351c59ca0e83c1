"""The embedding store (graft.embeddings.store): missing embeddings are reported, never invented;
`auto`'s choice is read from metrics/features.json; backbone names are checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graft.core.config import ConfigError, FeaturesParams
from graft.core.layout import Layout
from graft.data.manifest import read_manifest
from graft.embeddings.store import (
    FeaturesError,
    check_params,
    load_features,
    read_store,
    resolve_backbone,
    with_backbone,
)
from tests.fixtures import (
    SIZE,
    auto_params,
    make_pattern_images,
    make_split_project,
    tiny_params,
    write_train_manifest,
)


def test_missing_embeddings_are_reported_not_invented(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    make_pattern_images(layout.prepared / "images", per_class=1)
    df = write_train_manifest(layout, sorted((layout.prepared / "images").rglob("*.png")))
    with pytest.raises(FeaturesError, match="run the features stage"):
        load_features(layout, tiny_params(features={"batch_size": 8}), df)


def test_resolve_backbone_without_the_features_metrics_names_the_file(tmp_path: Path) -> None:
    layout = make_split_project(tmp_path, {"train": 1}, size=SIZE)
    with pytest.raises(FeaturesError,
                       match=r"metrics/features\.json: not found.*run the features stage"):
        resolve_backbone(auto_params(), layout)
    with pytest.raises(FeaturesError, match=r"metrics/features\.json: not found"):
        load_features(layout, auto_params(), read_manifest(layout.manifest))
    fixed = with_backbone(auto_params(), "efficientnet_lite1")
    assert resolve_backbone(fixed, layout) == "efficientnet_lite1"  # reads nothing


def test_an_unknown_timm_name_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="features.backbone = 'timm:no_such_net'"):
        check_params(FeaturesParams(backbone="timm:no_such_net"))


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_store_that_is_not_a_file_is_one_clear_error_not_a_hang(tmp_path: Path, kind) -> None:
    path = tmp_path / "efficientnet_lite0-224.npz"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(FeaturesError, match=r"efficientnet_lite0-224\.npz: not a regular file"):
        read_store(path)
