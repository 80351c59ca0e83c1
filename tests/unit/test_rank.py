"""graft.rank: LogME checked against the Gaussian evidence written out by hand, both scores
prefer informative features, and `graft rank` ranks backbones on the tiny project."""

from __future__ import annotations

import json

import numpy as np
import yaml
from typer.testing import CliRunner

from graft import rank
from graft.cli import app
from graft.layout import Layout
from tests.unit import test_finetune as shared

# the tiny pattern project (Lite0 features at 32 px cached) and one thread, from test_finetune
base, layout, one_thread = shared.base, shared.layout, shared.one_thread


def gaussian_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, β⁻¹I + α⁻¹FFᵀ) / N: the evidence of the Bayesian linear model, directly."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)) / n)


def test_logme_evidence_is_the_gaussian_marginal_likelihood_at_its_maximum() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((30, 5), (12, 40)):  # more images than dimensions, and fewer
        f = rng.normal(size=(n, d))
        # a target the features explain: the evidence has an interior maximum (with pure noise
        # it grows as α → ∞ and the 11 reference iterations stop on the way)
        y = f[:, 0] + 0.3 * rng.normal(size=n)
        ev = rank.evidence(f, y)
        direct = gaussian_log_evidence(f, y, ev.alpha, ev.beta)
        assert abs(ev.log_evidence - direct) < 1e-9, (ev, direct)
        if n < d:
            continue  # 12 images in 40 dimensions: 11 iterations at 1% tolerance stop early
        for a, b in ((2, 1), (0.5, 1), (1, 2), (1, 0.5)):  # α, β found by MacKay's fixed point
            assert gaussian_log_evidence(f, y, ev.alpha * a, ev.beta * b) < ev.log_evidence


def test_informative_features_score_higher_than_random_ones() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 10)
    noise = rng.normal(size=(40, 32))
    informative = noise.copy()
    informative[:, :4] += 3 * np.eye(4)[y]  # one direction per class
    assert rank.logme(informative, y) > rank.logme(noise, y) + 0.1
    assert rank.h_score(informative, y) > 1.5 * rank.h_score(noise, y)


def test_graft_rank_scores_every_backbone_and_caches_their_features(layout: Layout) -> None:
    (layout.root / "params.yaml").write_text(yaml.safe_dump(
        {"features": {"backbone": "efficientnet_lite0", "image_size": 32, "batch_size": 32}}))
    runner = CliRunner()
    result = runner.invoke(app, ["rank", "--root", str(layout.root), "--backbone",
                                 "efficientnet_lite0", "--backbone", "efficientnet_lite1"])
    assert result.exit_code == 0, result.output
    assert "| 1 | efficientnet_lite" in result.output and "best: " in result.output
    saved = json.loads(layout.rank.read_text())
    ranking = saved["ranking"]
    assert sorted(r["backbone"] for r in ranking) == ["efficientnet_lite0", "efficientnet_lite1"]
    assert [r["logme"] for r in ranking] == sorted((r["logme"] for r in ranking), reverse=True)
    assert saved["best"] == ranking[0]["backbone"] and saved["n_train"] == 12
    computed = {r["backbone"]: r["n_computed"] for r in ranking}
    # Lite0's were cached by the features stage; Lite2 is left out to keep the test short
    assert computed == {"efficientnet_lite0": 0, "efficientnet_lite1": 12}
    assert (layout.features / "efficientnet_lite1-32.npz").exists()
    again = rank.run(shared.tiny_params(), layout, ["efficientnet_lite1"])
    assert again["ranking"][0]["n_computed"] == 0


def test_rank_needs_two_training_classes(layout: Layout) -> None:
    from graft.manifest import read_manifest, write_manifest

    df = read_manifest(layout.manifest)
    write_manifest(layout.manifest, df[df["label"] == "circle"])
    (layout.root / "params.yaml").write_text("features: {image_size: 32}\n")
    result = CliRunner().invoke(app, ["rank", "--root", str(layout.root)])
    assert result.exit_code == 1 and "fewer than 2 classes" in result.output
