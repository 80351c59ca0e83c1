"""The features stage: real embeddings, cached by content hash, aligned with the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from graft import features
from graft.backbones import create_model, get_spec
from graft.config import params_from_dict
from graft.files import sha256_file
from graft.layout import Layout
from graft.manifest import write_manifest
from tests.conftest import make_pattern_images

PARAMS = params_from_dict({"features": {"image_size": 32, "batch_size": 8}})


def _manifest(layout: Layout, files: list[Path]) -> pd.DataFrame:
    rows = []
    for f in files:
        rel = f.relative_to(layout.prepared)
        rows.append({"path": str(rel), "label": f.parent.name, "split": "train",
                     "sha256": sha256_file(f), "width": 40, "height": 40, "mode": "RGB"})
    df = pd.DataFrame(rows)
    write_manifest(layout.manifest, df)
    return df


def test_embeddings_are_the_backbone_features_and_reruns_compute_only_new_images(tmp_path):
    layout = Layout(tmp_path)
    make_pattern_images(layout.prepared / "images", per_class=4)
    files = sorted((layout.prepared / "images").rglob("*.png"))
    df = _manifest(layout, files[:8])

    first = features.run(PARAMS, layout)
    assert (first["n_computed"], first["n_cached"], first["dim"]) == (8, 0, 1280)
    x = features.load_features(layout, PARAMS, df)
    assert x.shape == (8, 1280) and x.dtype == np.float32

    model = create_model("efficientnet_lite0", 0).eval()
    ref = get_spec("efficientnet_lite0").preprocessing(32).load(files[:2])
    with torch.inference_mode():
        expected = model(torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(x[:2], expected, rtol=1e-4, atol=1e-4)

    df = _manifest(layout, files)  # 4 new images
    second = features.run(PARAMS, layout)
    assert (second["n_computed"], second["n_cached"]) == (len(files) - 8, 8)
    assert json.loads(layout.metrics("features").read_text())["n_computed"] == len(files) - 8
    np.testing.assert_array_equal(features.load_features(layout, PARAMS, df)[:8], x)


def test_identical_content_is_embedded_once(tmp_path):
    layout = Layout(tmp_path)
    make_pattern_images(layout.prepared / "images", per_class=1)
    src = sorted((layout.prepared / "images").rglob("*.png"))
    copy = src[0].with_name("copy.png")
    shutil.copy(src[0], copy)
    _manifest(layout, [*src, copy])
    assert features.run(PARAMS, layout)["n_computed"] == len(src)


def test_missing_embeddings_are_reported_not_invented(tmp_path):
    layout = Layout(tmp_path)
    make_pattern_images(layout.prepared / "images", per_class=1)
    df = _manifest(layout, sorted((layout.prepared / "images").rglob("*.png")))
    with pytest.raises(features.FeaturesError, match="run the features stage"):
        features.load_features(layout, PARAMS, df)
