"""The svm and prototype strategies (graft.strategies.head_search, svm, prototype) and
`feature_norm`: they learn, their torch heads compute exactly what was fitted, and the shipped
head exports to ONNX. (The finetune stage with them: tests/unit/stages/test_finetune.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

from graft.core.config import FinetuneParams
from graft.deploy.onnx_export import to_onnx
from graft.models.backbones import create_model
from graft.models.heads import head_logits, normalise_features
from graft.strategies import get_strategy
from graft.strategies.base import FeatureData, HeadFit
from graft.strategies.head_search import FeatureFitError, fit_temperature, make_head
from graft.strategies.svm import SVM
from tests.fixtures import BACKBONE, SIZE, blobs, finetune_params

IS_TRAIN = np.r_[np.ones(18, bool), np.zeros(9, bool)]  # blobs(6, 0) then blobs(3, 1)


def grid(strategy: str, norm: str = "none", kernels: list[str] | None = None, **more
         ) -> FinetuneParams:
    """`strategy` with C in [0.1, 1.0] and γ in [1.0] (and `kernels`, for svm)."""
    svm = {"svm_kernels": kernels} if kernels else {}
    return finetune_params(strategy=strategy, feature_norm=norm, svm_c_grid=[0.1, 1.0],
                           svm_gamma_grid=[1.0], **svm, **more).finetune


def fit_blobs(strategy: str, norm: str, kernels: list[str] | None = None) -> HeadFit:
    x_tr, y_tr = blobs(6, 0)
    x_va, y_va = blobs(3, 1)
    data = FeatureData(np.vstack([x_tr, x_va]), np.concatenate([y_tr, y_va]), IS_TRAIN, 3)
    return get_strategy(strategy).fit_head(grid(strategy, norm, kernels), data)


@pytest.mark.parametrize(("strategy", "norm", "kernels"), [
    ("prototype", "none", None), ("prototype", "center_l2", None), ("svm", "none", ["linear"]),
    ("svm", "center", ["rbf"]), ("svm", "l2", ["linear", "rbf"])])
def test_each_feature_strategy_learns(strategy: str, norm: str, kernels: list | None) -> None:
    fitted = fit_blobs(strategy, norm, kernels)
    x_te, y_te = blobs(30, 2)
    acc = (head_logits(fitted.head, x_te).argmax(1) == y_te).mean()
    assert acc >= 0.9  # chance: 1/3
    setting = fitted.report["setting"]
    assert setting["temperature"] > 0 and fitted.report["C_selection"] == "val"
    p = grid(strategy, norm, kernels)
    assert len(fitted.report["candidates"]) == len(get_strategy(strategy).settings(p))
    if strategy == "svm":
        assert setting["kernel"] in kernels


def test_kernel_head_computes_the_svm_decision_function_exactly() -> None:
    x, y = blobs(6, 0)
    setting = {"kernel": "rbf", "C": 1.0, "gamma_x": 2.0}
    decision = SVM().decision(x, y, 3, setting, "none")
    head, spec = make_head(decision, "none", None, 1.0, x.shape[1], 3)
    assert spec["kind"] == "rbf" and spec["n_support"] == len(decision["support"])
    x_te, _ = blobs(5, 3)
    gamma = 2.0 / (x.shape[1] * x.var())  # 2 × sklearn's 'scale'
    for c in range(3):
        svc = SVC(kernel="rbf", C=1.0, gamma=gamma).fit(x, (y == c).astype(int))
        np.testing.assert_allclose(head_logits(head, x_te)[:, c], svc.decision_function(x_te),
                                   atol=1e-6)


def test_prototype_head_is_the_nearest_cosine_class_mean() -> None:
    fitted = fit_blobs("prototype", "center_l2")
    x_all = np.vstack([blobs(6, 0)[0], blobs(3, 1)[0]])
    y_all = np.concatenate([blobs(6, 0)[1], blobs(3, 1)[1]])
    mean = x_all[:18].mean(0)  # centring uses the training rows only
    z = normalise_features(x_all, mean, True)
    mu = np.stack([z[y_all == c].mean(0) for c in range(3)])  # refit on train + val
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    x_te, _ = blobs(10, 4)
    z_te = normalise_features(x_te, mean, True)
    expected = fitted.report["setting"]["temperature"] * z_te @ mu.T  # s·cos(z, μ_c)
    # float32 weights in the head: agreement to ~1e-6 relative
    np.testing.assert_allclose(head_logits(fitted.head, x_te), expected, atol=1e-4)


def test_temperature_lowers_the_held_out_nll() -> None:
    logits, y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), np.array([0, 1, 0])
    assert fit_temperature(logits, y) > 5  # always right: sharpen
    assert fit_temperature(logits, np.array([1, 0, 0])) < 1  # mostly wrong: soften


def test_rbf_head_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    import onnxruntime as ort

    x, y = blobs(6, 0, dim=1280)
    decision = SVM().decision(x, y, 3, {"kernel": "rbf", "C": 1.0}, "none")
    model = create_model(BACKBONE, 3, pretrained=False).eval()
    model.classifier, _ = make_head(decision, "center_l2", x.mean(0), 3.0, 1280, 3)
    to_onnx(model, tmp_path / "m.onnx", SIZE, 17)
    image = np.random.default_rng(0).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(image)).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": image})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_without_val_rows_settings_are_chosen_by_cross_validation() -> None:
    x, y = blobs(6, 0)
    all_train = FeatureData(x, y, np.ones(len(y), bool), 3)
    fitted = SVM().fit_head(grid("svm", kernels=["linear"]), all_train)
    assert fitted.report["C_selection"] == "cv" and fitted.val_accuracy >= 0.9
    with pytest.raises(FeatureFitError, match="fewer than 2"):  # class 1 has one row, class 2 none
        get_strategy("prototype").fit_head(grid("prototype"),
                                           FeatureData(x[:7], y[:7], np.ones(7, bool), 3))


def test_one_shot_without_val_uses_the_documented_defaults() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 8)) + 5 * np.eye(3, 8), np.arange(3)
    settings = [{"kernel": "linear", "C": c} for c in (0.01, 0.1, 1.0, 10.0)] + [
        {"kernel": "rbf", "C": 1.0, "gamma_x": 1.0}]
    assert SVM().default_setting(settings) == {"kernel": "linear", "C": 1.0}
    one_shot = FeatureData(x, y, np.ones(3, bool), 3)
    for strategy in ("prototype", "svm"):  # the default grids
        fitted = get_strategy(strategy).fit_head(finetune_params(strategy=strategy).finetune,
                                                 one_shot)
        assert fitted.report["C_selection"] == "default"
        assert fitted.report["setting"]["temperature"] == 1.0
    assert fitted.report["setting"] == {"kernel": "linear", "C": 1.0, "temperature": 1.0}
