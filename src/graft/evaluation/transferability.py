"""Transferability: score each backbone's frozen features for this task before training anything.

Two scores on the cached embeddings of the training rows (graft.embeddings; the ones missing are
computed into the same store, at `features.image_size`):

- LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning"): the log marginal likelihood (evidence) per image of a Bayesian linear model
  y = Fw + ε, w ~ N(0, α⁻¹I), ε ~ N(0, β⁻¹), with α and β set by evidence maximisation (MacKay's
  fixed-point iteration). For classification, one model per class on one-vs-rest 0/1 targets,
  averaged over classes. Higher is better; comparable across backbones on the same data.
- H-score (Bao et al. 2019): tr(Σ_f⁻¹ Σ_between), how much of the feature covariance the class
  means explain. With fewer images than dimensions Σ_f is singular, so it is the Ledoit–Wolf
  shrinkage estimate (the "regularised H-score" of Ibrahim et al. 2022).

`rank_backbones` (`graft rank`) writes metrics/rank.json (not a DVC stage: it reads the store and
writes nothing the pipeline uses) and returns the ranking, best LogME first. The features stage
with `features.backbone: auto` ranks with the same `score` (`select_backbone`) and keeps the top
LogME backbone.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.covariance import LedoitWolf

from graft.core.config import Params
from graft.core.files import write_json
from graft.core.layout import Layout
from graft.data.manifest import class_names, read_manifest
from graft.embeddings.embed import EmbedRun, embed_missing
from graft.embeddings.store import embeddings, with_backbone

MAX_ITER = 11  # fixed-point iterations, as the reference implementation; converges in < 5
TOL = 1e-2  # relative change of λ = α/β that ends the iteration


class RankError(ValueError):
    """Training rows that cannot be scored."""


@dataclasses.dataclass(frozen=True)
class Evidence:
    """LogME's result for one target: evidence per image and the maximising α, β."""

    log_evidence: float
    alpha: float
    beta: float


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the one-vs-rest LogME evidence per image (natural log)."""
    f = np.asarray(features, np.float64)
    u, sigma, vt = np.linalg.svd(f, full_matrices=False)  # F = U Σ Vᵀ: eigenvalues s = σ²
    classes = np.unique(labels)
    if len(classes) < 2:
        raise RankError(f"LogME needs at least 2 classes, got {len(classes)}")
    return float(np.mean([evidence(f, (labels == c).astype(np.float64), (u, sigma, vt))
                          .log_evidence for c in classes]))


def evidence(f: np.ndarray, y: np.ndarray,
             svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Evidence:
    """Maximised log evidence per image of y (N,) under the Bayesian linear model on f (N, D).

    With FᵀF = V diag(s) Vᵀ (s = σ², zero beyond rank r) the posterior mean is
    m = β V diag(1/(α + βs)) Vᵀ Fᵀ y, γ = Σ βs/(α + βs) effective parameters, and the fixed
    point α = γ/‖m‖², β = (N − γ)/‖y − Fm‖² (MacKay 1992)."""
    n, d = f.shape
    u, sigma, vt = svd if svd is not None else np.linalg.svd(f, full_matrices=False)
    s = sigma ** 2
    uty = u.T @ y  # Vᵀ Fᵀ y = Σ Uᵀ y
    alpha, beta = 1.0, 1.0
    lam = alpha / beta
    for _ in range(MAX_ITER):
        gamma = float((beta * s / (alpha + beta * s)).sum())
        m_coef = beta * sigma * uty / (alpha + beta * s)  # m in the basis of V's columns
        m2 = float((m_coef ** 2).sum())
        res2 = float(((y - u @ (sigma * m_coef)) ** 2).sum())  # F m = U Σ (Vᵀ m)
        alpha, beta = gamma / max(m2, 1e-300), (n - gamma) / max(res2, 1e-300)
        new_lam = alpha / beta
        done = abs(new_lam - lam) / lam < TOL
        lam = new_lam
        if done:
            break
    # recompute m, ‖m‖², ‖y − Fm‖² at the final α, β, then the closed-form log evidence
    m_coef = beta * sigma * uty / (alpha + beta * s)
    m2 = float((m_coef ** 2).sum())
    res2 = float(((y - u @ (sigma * m_coef)) ** 2).sum())
    log_det = float(np.log(alpha + beta * s).sum()) + (d - len(s)) * np.log(alpha)
    total = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det
             - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return Evidence(total / n, alpha, beta)


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """tr(Σ_f⁻¹ Σ_between), Σ_f the Ledoit–Wolf covariance of the features and Σ_between the
    covariance of each image's class mean (class-frequency weighted)."""
    f = np.asarray(features, np.float64)
    f = f - f.mean(axis=0)
    cov = LedoitWolf(assume_centered=True).fit(f).covariance_
    means = np.zeros_like(f)
    for c in np.unique(labels):
        means[labels == c] = f[labels == c].mean(axis=0)
    between = means.T @ means / len(f)
    return float(np.trace(np.linalg.solve(cov, between)))


def training_rows(df: pd.DataFrame, manifest: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest's training rows and their class indices (graft.data.manifest.class_names order);
    both scores need at least 2 classes."""
    train = df.loc[df["split"] == "train"].reset_index(drop=True)
    if train["label"].nunique() < 2:
        raise RankError(f"{manifest}: training rows have fewer than 2 classes")
    index = {c: i for i, c in enumerate(class_names(df))}
    return train, train["label"].map(index).to_numpy()


def score(features: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """One backbone's scores on its training features, rounded as reported: `graft rank` and the
    features stage with `features.backbone: auto` both rank backbones with this."""
    return {"logme": round(logme(features, labels), 6),
            "h_score": round(h_score(features, labels), 4), "dim": int(features.shape[1])}


def best_first(rows: list[dict]) -> list[dict]:
    """Scored rows by LogME, highest first (stable: ties keep their order)."""
    return sorted(rows, key=lambda r: -r["logme"])


def rank_backbones(params: Params, layout: Layout, backbones: list[str] | None = None) -> dict:
    """Score every backbone (default: features.auto_backbones, the candidates of `auto`; a
    `timm:<name>` one reads its weights from features.weights_dir) on the manifest's training
    rows; write metrics/rank.json; return it."""
    df = read_manifest(layout.manifest)
    train, y = training_rows(df, layout.manifest)
    rows = []
    for name in backbones or params.features.auto_backbones:
        t0 = time.perf_counter()
        run = embed_missing(layout, with_backbone(params, name), train)
        rows.append({"backbone": name, "image_size": params.features.image_size,
                     **score(embeddings(run.store, train), y), "n_computed": len(run.computed),
                     "seconds": round(time.perf_counter() - t0, 2)})
    rows = best_first(rows)
    by_h = sorted(rows, key=lambda r: -r["h_score"])
    result = {"n_train": int(len(train)), "n_classes": len(class_names(df)),
              "best": rows[0]["backbone"], "best_by_h_score": by_h[0]["backbone"],
              "ranking": rows}
    write_json(layout.rank, result)
    return result


def select_backbone(runs: dict[str, EmbedRun], df: pd.DataFrame, layout: Layout) -> dict:
    """`features.backbone: auto`: every backbone's `score` on its training-row embeddings, best
    LogME first (the top one is chosen: LogME's order agreed with linear probes where H-score's
    did not, README "graft rank")."""
    train, y = training_rows(df, layout.manifest)
    ranking = [{"backbone": name, **score(embeddings(run.store, train), y)}
               for name, run in runs.items()]
    return {"method": "logme", "ranking": best_first(ranking)}
