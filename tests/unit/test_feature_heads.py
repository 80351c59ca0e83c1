"""The svm and prototype strategies and `feature_norm` (graft.feature_fit, graft.heads): they
learn, their torch heads compute exactly what was fitted, and they ship as one network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

from graft import feature_fit, features, finetune, heads
from graft.backbones import create_model
from graft.checkpoint import load_checkpoint
from graft.config import ConfigError, params_from_dict
from graft.export import to_onnx
from graft.inference import run_model
from graft.layout import Layout
from graft.manifest import absolute_paths, read_manifest
from tests.conftest import copy_stage_outputs, make_split_project

BACKBONE = "efficientnet_lite0"
SIZE = 32  # pixels
CLASSES = ["circle", "square", "stripes"]


def blobs(per_class: int, seed: int, dim: int = 16, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """k Gaussian clusters (unit noise, centres 4 apart on the axes, all shifted by +5)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), per_class)
    centres = 4 * np.eye(k, dim) + 5
    return centres[y] + rng.normal(size=(len(y), dim)), y


def fit_blobs(strategy: str, norm: str, **grid: list) -> feature_fit.Fitted:
    x_tr, y_tr = blobs(6, 0)
    x_va, y_va = blobs(3, 1)
    settings = feature_fit.candidates(strategy, grid.get("kernels", ["linear", "rbf"]),
                                      [0.1, 1.0], [1.0])
    return feature_fit.fit_strategy(strategy, np.vstack([x_tr, x_va]), np.concatenate([y_tr, y_va]),
                                    np.r_[np.ones(18, bool), np.zeros(9, bool)], 3, norm,
                                    settings, "none", 0)


@pytest.mark.parametrize(("strategy", "norm", "kernels"), [
    ("prototype", "none", []), ("prototype", "center_l2", []), ("svm", "none", ["linear"]),
    ("svm", "center", ["rbf"]), ("svm", "l2", ["linear", "rbf"])])
def test_each_feature_strategy_learns(strategy: str, norm: str, kernels: list) -> None:
    fitted = fit_blobs(strategy, norm, kernels=kernels)
    x_te, y_te = blobs(30, 2)
    acc = (heads.head_logits(fitted.head, x_te).argmax(1) == y_te).mean()
    assert acc >= 0.9  # chance: 1/3
    assert fitted.setting["temperature"] > 0 and fitted.selection == "val"
    assert len(fitted.scores) == len(feature_fit.candidates(strategy, kernels, [0.1, 1.0], [1.0]))
    if strategy == "svm":
        assert fitted.setting["kernel"] in kernels


def test_kernel_head_computes_the_svm_decision_function_exactly() -> None:
    x, y = blobs(6, 0)
    setting = {"kernel": "rbf", "C": 1.0, "gamma_x": 2.0}
    decision = feature_fit._fit_svm(x, y, 3, setting, "none")
    head, spec = feature_fit.make_head(decision, "none", None, 1.0, x.shape[1], 3)
    assert spec["kind"] == "rbf" and spec["n_support"] == len(decision["support"])
    x_te, _ = blobs(5, 3)
    gamma = 2.0 / (x.shape[1] * x.var())  # 2 × sklearn's 'scale'
    for c in range(3):
        svc = SVC(kernel="rbf", C=1.0, gamma=gamma).fit(x, (y == c).astype(int))
        np.testing.assert_allclose(heads.head_logits(head, x_te)[:, c],
                                   svc.decision_function(x_te), atol=1e-6)


def test_prototype_head_is_the_nearest_cosine_class_mean() -> None:
    fitted = fit_blobs("prototype", "center_l2")
    x_all = np.vstack([blobs(6, 0)[0], blobs(3, 1)[0]])
    y_all = np.concatenate([blobs(6, 0)[1], blobs(3, 1)[1]])
    mean = x_all[:18].mean(0)  # centring uses the training rows only
    z = heads.normalise(x_all, mean, True)
    mu = np.stack([z[y_all == c].mean(0) for c in range(3)])  # refit on train + val
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    x_te, _ = blobs(10, 4)
    z_te = heads.normalise(x_te, mean, True)
    expected = fitted.setting["temperature"] * z_te @ mu.T  # s·cos(z, μ_c)
    # float32 weights in the head: agreement to ~1e-6 relative
    np.testing.assert_allclose(heads.head_logits(fitted.head, x_te), expected, atol=1e-4)


def test_feature_norm_module_matches_numpy() -> None:
    x, _ = blobs(4, 0)
    for mode in heads.FEATURE_NORMS:
        mean, l2 = heads.norm_parts(mode, x)
        module = heads.build_head({"norm": mode, "kind": "linear", "n_support": 0}, 16, 3)[0]
        if mean is not None:
            module.mean.copy_(torch.as_tensor(mean))
        np.testing.assert_allclose(heads.head_logits(module, x), heads.normalise(x, mean, l2),
                                   atol=1e-6)  # the mean is a float32 buffer


def test_temperature_lowers_the_held_out_nll() -> None:
    logits, y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), np.array([0, 1, 0])
    assert feature_fit.fit_temperature(logits, y) > 5  # always right: sharpen
    assert feature_fit.fit_temperature(logits, np.array([1, 0, 0])) < 1  # mostly wrong: soften


# ---- the stage on a tiny image project (Lite0 at 32 px) ------------------------------------


def tiny_params(**section: object):
    return params_from_dict({"features": {"backbone": BACKBONE, "image_size": SIZE},
                             "finetune": section})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = make_split_project(tmp_path_factory.mktemp("feature-heads"), {"train": 4, "val": 3})
    features.run(tiny_params(), layout)
    return layout.root


@pytest.fixture()
def layout(base: Path, tmp_path: Path) -> Layout:
    return copy_stage_outputs(base, tmp_path)


@pytest.mark.parametrize("section", [
    {"strategy": "svm", "svm_c_grid": [0.1, 1.0], "svm_gamma_grid": [1.0]},
    {"strategy": "prototype", "feature_norm": "center_l2"},
    {"strategy": "linear_probe", "feature_norm": "center_l2", "c_grid": [0.1, 1.0]}])
def test_stage_saves_one_network_that_computes_the_fitted_head(layout: Layout,
                                                                 section: dict) -> None:
    params = tiny_params(**section)
    metrics = finetune.run(params, layout)
    assert metrics["val_accuracy"] >= 0.8 and metrics["train_accuracy"] >= 0.9  # chance: 1/3
    assert metrics["feature_norm"] == section.get("feature_norm", "none")
    assert json.loads(layout.metrics("finetune").read_text()) == metrics
    if section["strategy"] != "linear_probe":
        assert "temperature" in metrics["setting"] and metrics["candidates"]
    model, meta = load_checkpoint(layout.model)  # rebuilt from the saved head spec
    df = read_manifest(layout.manifest)
    feats = features.load_features(layout, params, df)
    from_cache = heads.head_logits(model.classifier, feats)
    from_images = run_model(model, absolute_paths(df, layout.manifest), meta["preprocessing"],
                            batch_size=8, device=torch.device("cpu"))
    np.testing.assert_allclose(from_images, from_cache, atol=1e-3, rtol=1e-4)
    y = df["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert (from_images.argmax(1) == y).mean() >= 0.9


def test_rbf_head_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    import onnxruntime as ort

    x, y = blobs(6, 0, dim=1280)
    decision = feature_fit._fit_svm(x, y, 3, {"kernel": "rbf", "C": 1.0}, "none")
    model = create_model(BACKBONE, 3, pretrained=False).eval()
    model.classifier, _ = feature_fit.make_head(decision, "center_l2", x.mean(0), 3.0, 1280, 3)
    to_onnx(model, tmp_path / "m.onnx", SIZE, 17)
    image = np.random.default_rng(0).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(image)).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": image})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("section", [{"strategy": "finetune", "feature_norm": "l2"},
                                     {"svm_kernels": ["poly"]}, {"svm_c_grid": []},
                                     {"svm_gamma_grid": [0.0]}])
def test_bad_feature_strategy_params_are_rejected(section: dict, tmp_path: Path) -> None:
    key = next(k for k in section if k != "strategy")
    with pytest.raises(ConfigError, match=f"finetune.{key} "):
        finetune.run(tiny_params(**section), Layout(tmp_path))


def test_without_val_rows_settings_are_chosen_by_cross_validation() -> None:
    x, y = blobs(6, 0)
    settings = feature_fit.candidates("svm", ["linear"], [0.1, 1.0], [1.0])
    fitted = feature_fit.fit_strategy("svm", x, y, np.ones(len(y), bool), 3, "none", settings,
                                      "none", 0)
    assert fitted.selection == "cv" and fitted.val_accuracy >= 0.9
    with pytest.raises(feature_fit.FeatureFitError, match="fewer than 2"):
        feature_fit.fit_strategy("prototype", x[:7], y[:7], np.ones(7, bool), 3, "none", [{}],
                                 "none", 0)  # class 1 has one row, class 2 none
