"""`graft labelbench` end to end on a tiny digits run (32 px, 100 pool images, one seed)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.core.config import ConfigError
from graft.labels.benchmark import load_labelbench_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_labelbench_writes_every_table(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"labelbench": {
        "datasets": ["digits"], "image_size": 32, "pool_size": 100, "test_size": 60,
        "seeds": 1, "methods": ["auto", "random"], "budgets": [10, 20], "audit_per_class": 4,
        "dup_train": 50, "planted": 3}}))

    result = CliRunner().invoke(app, ["labelbench", "--params", str(params)])

    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "results.csv")
    acc = df.loc[df["benchmark"] == "suggest"]
    assert sorted(acc["labels"].unique()) == [10, 20]
    assert set(acc["method"]) == {"auto", "random"} and acc["value"].between(0, 1).all()
    flips = df.loc[(df["benchmark"] == "label_errors")].set_index("metric")["value"]
    assert flips["k"] == 4 and 0 <= flips["top_k"] <= flips["top_2k"] <= 1
    dups = df.loc[(df["benchmark"] == "near_duplicates")].set_index("metric")["value"]
    assert dups["n_test"] == 60 and dups["too_small"] == 110  # 8-px digits: hashes only
    text = (tmp_path / "results.md").read_text()
    assert "auto − random" in text and "| digits | 40 |" in text
    assert json.loads((tmp_path / "metrics.json").read_text())["seeds"] == 1

    params.write_text(yaml.safe_dump({"labelbench": {"budgets": [0]}}))
    with pytest.raises(ConfigError, match="budgets"):
        load_labelbench_params(params)
