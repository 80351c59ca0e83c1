"""The few-shot benchmark on digits (graft.evaluation.fewshot): every output, one table row per
cell, 1-shot works (the strategies' 1-shot defaults: tests/unit/strategies/)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from graft.core.config import ConfigError
from graft.evaluation import fewshot
from graft.evaluation.fewshot_report import RANK_COLUMNS, RESULT_COLUMNS, summarise
from tests.fixtures import REPO

BACKBONES = ["efficientnet_lite0", "efficientnet_lite1"]
TINY = {"datasets": ["digits"], "shots": [1, 3],
        "strategies": ["prototype", "linear_probe", "ensemble"], "backbones": BACKBONES,
        "episodes": 2, "test_size": 100, "image_size": 32}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fewshot")
    (out / "params.yaml").write_text(yaml.safe_dump({"fewshot": TINY}))
    metrics = fewshot.run(fewshot.load_fewshot_params(out / "params.yaml"), out, log=False)
    return out, metrics


def test_tiny_digits_run_writes_every_output(tiny_run: tuple[Path, dict]) -> None:
    out, metrics = tiny_run
    results = pd.read_csv(out / "results.csv")
    assert tuple(results.columns) == RESULT_COLUMNS
    # 2 shots × 2 episodes × (2 backbones × 2 strategies + the ensemble + the raw-pixel baseline)
    assert len(results) == 24 and set(results["episode"]) == {0, 1}
    assert set(results["strategy"]) == {"prototype", "linear_probe", "ensemble", "pixels_logreg"}
    assert set(results.loc[results["strategy"] == "ensemble", "backbone"]) == {"ensemble"}
    assert results["accuracy"].between(0, 1).all() and (results["seconds"] >= 0).all()

    table = [line for line in (out / "results.md").read_text().splitlines()
             if line.startswith("| digits")]
    assert len(table) == 12  # one row per (backbone, strategy, shots) cell
    assert all(" ± " in line and line.rstrip().endswith("|") for line in table)

    with open(out / "plots" / "accuracy_vs_shots.csv", newline="") as fh:
        plot = list(csv.DictReader(fh))
    assert len(plot) == 12 and set(plot[0]) == {"shots", "accuracy", "series"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["best"]["digits"]) == {"1", "3"}


def test_transfer_beats_chance_clearly_even_at_one_shot(tiny_run: tuple[Path, dict]) -> None:
    results = pd.read_csv(tiny_run[0] / "results.csv")
    means = results.groupby(["strategy", "shots"])["accuracy"].mean()
    for strategy in ("prototype", "linear_probe", "ensemble"):
        assert means[strategy, 1] > 0.25, means  # chance is 0.10 (ten digits)
        assert means[strategy, 3] > 0.45, means


def test_ranking_check_scores_each_backbone_and_counts_its_hits(tiny_run) -> None:
    out, metrics = tiny_run
    scores = pd.read_csv(out / "ranking.csv")
    assert tuple(scores.columns) == RANK_COLUMNS
    assert len(scores) == 2 * 2 * len(BACKBONES)  # shots × episodes × backbones
    results = pd.read_csv(out / "results.csv")
    check = metrics["ranking_check"]["logme"]["linear_probe"]
    assert check["episodes"] == 4
    hits = 0  # recount: the top-LogME backbone's linear_probe accuracy is the best one
    for (shots, episode), part in scores.groupby(["shots", "episode"]):
        pick = part.loc[part["logme"].idxmax(), "backbone"]
        runs = results[(results["shots"] == shots) & (results["episode"] == episode)
                       & (results["strategy"] == "linear_probe")].set_index("backbone")
        hits += runs.loc[pick, "accuracy"] >= runs.loc[BACKBONES, "accuracy"].max()
    assert check["picked_best"] == hits and check["mean_regret"] >= 0
    assert check["random_regret"] >= 0 and set(check["by_dataset"]) == {"digits"}
    assert set(metrics["ranking_check"]) == {"logme", "h_score"}


def test_interval_is_a_student_t_interval_over_episodes() -> None:
    acc = [0.6, 0.7, 0.8]
    results = pd.DataFrame({"dataset": "d", "backbone": "b", "strategy": "s", "shots": 1,
                            "episode": range(3), "accuracy": acc, "seconds": 0.0})
    cell = summarise(results).iloc[0]
    half = 4.302653 * np.std(acc, ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert cell["mean"] == pytest.approx(0.7) and cell["half_width"] == pytest.approx(half)


def test_params_are_checked_strictly(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    for bad, match in (({"shots": [0]}, "fewshot.shots"), ({"shotz": [1]}, "unknown key"),
                       ({"strategies": ["magic"]}, "fewshot.strategies: 'magic' is not one of "
                                                    "linear_probe, prototype, svm")):
        path.write_text(yaml.safe_dump({"fewshot": bad}))
        with pytest.raises(ConfigError, match=match):
            fewshot.load_fewshot_params(path)
    shipped = fewshot.load_fewshot_params(REPO / "pipelines" / "fewshot-benchmark" / "params.yaml")
    assert shipped.shots == [1, 5, 10, 20] and shipped.episodes == 5


def test_the_episodes_fan_out_over_a_dask_cluster(tiny_run, tmp_path: Path, dask_cluster,
                                                  prefect_api) -> None:
    from distributed import Client

    pytest.importorskip("prefect_dask")
    # a corner of the tiny grid (its rows do not depend on the rest), so that it stays cheap
    small = {**TINY, "shots": [1], "strategies": ["prototype"], "backbones": BACKBONES[:1]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"fewshot": {**small, "cluster": dask_cluster.address}}))
    p = fewshot.load_fewshot_params(tmp_path / "params.yaml")
    dask_cluster.wait()
    with Client(dask_cluster.address) as client:
        count = lambda dask_worker: dask_worker.state.executed_count  # noqa: E731
        before = sum(client.run(count).values())
        fewshot.run(p, tmp_path, log=False)
        assert sum(client.run(count).values()) - before == 2  # one task per episode
    assert sorted(q.name for q in (tmp_path / "work").iterdir()) == [
        "digits-episode0", "digits-episode1"]
    keys = ["dataset", "backbone", "strategy", "shots", "episode"]
    local = pd.read_csv(tiny_run[0] / "results.csv")
    local = local.loc[(local["shots"] == 1) & local["strategy"].isin(
        ["prototype", "pixels_logreg"]) & local["backbone"].isin([*BACKBONES[:1], "pixels"])]
    local = local.sort_values(keys)
    remote = pd.read_csv(tmp_path / "results.csv").sort_values(keys)
    assert len(remote) == 4  # 2 episodes × (prototype + the raw-pixel baseline)
    assert local[keys].values.tolist() == remote[keys].values.tolist()
    # the same images and seeds; stores filled in other batches differ by float rounding only
    np.testing.assert_allclose(remote["accuracy"], local["accuracy"], atol=0.02)
