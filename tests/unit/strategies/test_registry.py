"""The strategy registry (graft.strategies): adding a strategy is one class and one
`register_strategy` line. A toy feature strategy registered here runs through the real finetune
stage, ships a checkpoint that loads and predicts, passes config validation only while it is
registered, and is among `auto`'s candidates; unknown names are refused listing the registered
ones."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from graft.core.config import ConfigError, FinetuneParams, load_params
from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, read_manifest
from graft.embeddings.store import load_features
from graft.models.checkpoint import load_checkpoint
from graft.models.heads import build_head, head_logits, head_spec, last_linear, norm_parts
from graft.models.heads import normalise_features as normalise
from graft.models.inference import run_model
from graft.stages import check_params as check_every_stage
from graft.stages import finetune
from graft.strategies import (
    check_params,
    get_strategy,
    register_strategy,
    strategy_kind,
    strategy_names,
    unregister_strategy,
)
from graft.strategies.auto import AUTO_NORMS, as_params, feature_candidates, score_candidates
from graft.strategies.base import (
    Curve,
    FeatureData,
    FeatureStrategy,
    HeadFit,
    Strategy,
    train_accuracy,
)
from tests.fixtures import CLASSES, blobs, finetune_params

BUILT_IN = ["linear_probe", "prototype", "svm", "finetune", "lp_ft", "ensemble", "auto"]


class ToyNearest(FeatureStrategy):
    """Nearest class mean (Euclidean) on the embeddings after `feature_norm`, no temperature,
    shipped as a Linear head: logits_c = μ_c·z − ½‖μ_c‖², whose argmax is the nearest mean."""

    def narrow(self, p: FinetuneParams, setting: dict[str, Any]) -> FinetuneParams:
        return dataclasses.replace(p, strategy="toy")

    def score(self, p: FinetuneParams, data: FeatureData) -> float:
        z, _ = self._normalised(p, data)
        t = data.is_train
        weight, bias = self._means(z[t], data.y[t], data.n_classes)
        return float(((z[~t] @ weight.T + bias).argmax(1) == data.y[~t]).mean())

    def fit_head(self, p: FinetuneParams, data: FeatureData) -> HeadFit:
        z, mean = self._normalised(p, data)
        val_accuracy = self.score(p, data) if (~data.is_train).any() else None
        weight, bias = self._means(z, data.y, data.n_classes)  # refit on train + val
        spec = head_spec(p.feature_norm)
        head = build_head(spec, z.shape[1], data.n_classes)
        with torch.no_grad():
            if mean is not None:
                head[0].mean.copy_(torch.as_tensor(mean))
            last_linear(head).weight.copy_(torch.as_tensor(weight))
            last_linear(head).bias.copy_(torch.as_tensor(bias))
        return HeadFit(head, spec, val_accuracy, train_accuracy(head, data),
                       Curve(("step", "val_accuracy"), [[0, val_accuracy]]),
                       {"setting": {"nearest": "mean"}})

    @staticmethod
    def _normalised(p: FinetuneParams, data: FeatureData) -> tuple[np.ndarray, Any]:
        mean, l2 = norm_parts(p.feature_norm, data.feats[data.is_train])
        return normalise(data.feats, mean, l2), mean

    @staticmethod
    def _means(z: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        mu = np.stack([z[y == c].mean(axis=0) for c in range(k)])
        return mu, -0.5 * (mu ** 2).sum(axis=1)


@pytest.fixture()
def toy() -> Iterator[ToyNearest]:
    strategy = ToyNearest()
    register_strategy("toy", "features", strategy)
    try:
        yield strategy
    finally:
        unregister_strategy("toy")


def test_the_toy_runs_through_the_finetune_stage_and_ships_a_working_model(
        toy: ToyNearest, tiny_layout: Layout) -> None:
    layout = tiny_layout
    params = finetune_params(strategy="toy")
    metrics = finetune.run(params, layout)
    assert metrics["strategy"] == "toy" and metrics["setting"] == {"nearest": "mean"}
    assert json.loads(layout.metrics("finetune").read_text()) == metrics
    assert metrics["val_accuracy"] >= 0.8 and metrics["train_accuracy"] >= 0.9  # chance: 1/3

    model, meta = load_checkpoint(layout.model)  # rebuilt without the toy's code
    assert meta["info"]["strategy"] == "toy" and meta["class_names"] == CLASSES
    df = read_manifest(layout.manifest)
    from_images = run_model(model, absolute_paths(df, layout.manifest), meta["preprocessing"],
                            batch_size=8, device=torch.device("cpu"))
    np.testing.assert_allclose(from_images, head_logits(model.classifier,
                                                        load_features(layout, params, df)),
                               atol=1e-3, rtol=1e-4)
    y = df["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    assert (from_images.argmax(1) == y).mean() >= 0.9


def test_config_accepts_the_toy_only_while_it_is_registered(toy: ToyNearest) -> None:
    p = finetune_params(strategy="toy", ensemble_strategies=["linear_probe", "toy"]).finetune
    check_params(p)
    assert strategy_kind("toy") == "features" and get_strategy("toy") is toy
    assert strategy_names("features") == ["linear_probe", "prototype", "svm", "toy"]
    unregister_strategy("toy")
    with pytest.raises(ConfigError, match=re.escape(
            f"params: finetune.strategy = 'toy' must be one of {', '.join(BUILT_IN)}")):
        check_params(p)
    with pytest.raises(ConfigError, match=r"finetune\.ensemble_strategies = .*'toy'"):
        check_params(finetune_params(ensemble_strategies=["toy"]).finetune)


def test_auto_tries_the_toy_among_its_candidates(toy: ToyNearest, tiny_layout: Layout) -> None:
    p = finetune_params(strategy="auto", c_grid=[1.0], svm_kernels=["linear"], svm_c_grid=[1.0])
    candidates = feature_candidates(p.finetune)
    toys = [c for c in candidates if c["strategy"] == "toy"]
    assert toys == [{"strategy": "toy", "feature_norm": norm} for norm in AUTO_NORMS]
    assert as_params(p.finetune, toys[1]).strategy == "toy"
    assert as_params(p.finetune, toys[1]).feature_norm == "center_l2"
    x, y = blobs(6, 0)
    data = FeatureData(x, y, np.arange(len(y)) % 3 != 0, 3)
    scored = score_candidates(toys, data, p.finetune, "val", float("inf"))
    assert all(s["score"] >= 0.9 for s in scored)  # well-separated blobs

    search = finetune.run(p, tiny_layout)["auto"]  # through the stage
    tried = [c for c in search["candidates"] if c["strategy"] == "toy"]
    assert [c["feature_norm"] for c in tried] == list(AUTO_NORMS)
    assert all(0 <= c["score"] <= 1 for c in tried)
    assert len(search["candidates"]) == len(candidates) + 1  # + lp_ft (skipped: val is small)


def test_an_unknown_strategy_is_refused_listing_the_registered_ones(tmp_path) -> None:
    registered = ", ".join(BUILT_IN)
    with pytest.raises(ConfigError, match=re.escape(
            f"unknown strategy 'magic'; registered: {registered}")):
        get_strategy("magic")
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  strategy: magic\n")
    params = load_params(path)  # a string to graft.core.config: the registry knows the names
    with pytest.raises(ConfigError, match=re.escape(
            f"{path}: finetune.strategy = 'magic' must be one of {registered}")):
        check_every_stage(params, str(path))


def test_registration_is_checked() -> None:
    with pytest.raises(ValueError, match="'linear_probe' is already registered"):
        register_strategy("linear_probe", "features", ToyNearest())
    with pytest.raises(ValueError, match="kind 'magic' is not one of features, network"):
        register_strategy("toy", "magic", ToyNearest())
    with pytest.raises(ValueError, match="'c_grid_2' is not a finetune key"):
        register_strategy("toy", "composite", ToyNearest(), backbones_key="c_grid_2")
    register_strategy("not_a_head", "features", Strategy())
    try:
        with pytest.raises(TypeError, match="registered as 'features' but Strategy is not a "
                                            "FeatureStrategy"):
            get_strategy("not_a_head")
    finally:
        unregister_strategy("not_a_head")
    assert "toy" not in strategy_names() and "not_a_head" not in strategy_names()


def test_ensemble_backbones_must_share_one_preprocessing() -> None:
    from tests.fixtures import BACKBONE

    # Lite0 takes mean 0.5; timm's resnet18 ImageNet's (0.485, 0.456, 0.406)
    mixed = FinetuneParams(strategy="ensemble", ensemble_backbones=[BACKBONE, "timm:resnet18"])
    with pytest.raises(ConfigError, match=r"params: finetune\.ensemble_backbones = .* must "
                                          r"share one preprocessing"):
        check_params(mixed, "params")
    unknown = FinetuneParams(strategy="ensemble", ensemble_backbones=[BACKBONE, "resnet9000"])
    with pytest.raises(ConfigError, match=r"finetune\.ensemble_backbones = 'resnet9000' must "
                                          r"be one of"):
        check_params(unknown, "params")
