"""The features stage: real embeddings, cached by content hash, aligned with the manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch

from graft.core.layout import Layout
from graft.embeddings.store import load_features
from graft.models.backbones import create_model, get_spec
from graft.stages import features
from tests.fixtures import make_pattern_images, tiny_params, write_train_manifest

PARAMS = tiny_params(features={"batch_size": 8})  # Lite0 at 32 px


def test_embeddings_are_the_backbone_features_and_reruns_compute_only_new_images(tmp_path):
    layout = Layout(tmp_path)
    make_pattern_images(layout.prepared / "images", per_class=4)
    files = sorted((layout.prepared / "images").rglob("*.png"))
    df = write_train_manifest(layout, files[:8])

    first = features.run(PARAMS, layout)
    assert (first["n_computed"], first["n_cached"], first["dim"]) == (8, 0, 1280)
    x = load_features(layout, PARAMS, df)
    assert x.shape == (8, 1280) and x.dtype == np.float32

    model = create_model("efficientnet_lite0", 0).eval()
    ref = get_spec("efficientnet_lite0").preprocessing(32).load(files[:2])
    with torch.inference_mode():
        expected = model(torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(x[:2], expected, rtol=1e-4, atol=1e-4)

    df = write_train_manifest(layout, files)  # 4 new images
    second = features.run(PARAMS, layout)
    assert (second["n_computed"], second["n_cached"]) == (len(files) - 8, 8)
    assert json.loads(layout.metrics("features").read_text())["n_computed"] == len(files) - 8
    np.testing.assert_array_equal(load_features(layout, PARAMS, df)[:8], x)


def test_identical_content_is_embedded_once(tmp_path):
    layout = Layout(tmp_path)
    make_pattern_images(layout.prepared / "images", per_class=1)
    src = sorted((layout.prepared / "images").rglob("*.png"))
    copy = src[0].with_name("copy.png")
    shutil.copy(src[0], copy)
    write_train_manifest(layout, [*src, copy])
    assert features.run(PARAMS, layout)["n_computed"] == len(src)
