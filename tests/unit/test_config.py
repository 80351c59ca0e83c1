"""params.yaml loading: every key is known, typed, and present in the shipped params.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from graft.config import SECTIONS, ConfigError, Params, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[2]


def test_shipped_params_yaml_states_every_key_explicitly():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert set(raw[name]) == {f.name for f in dataclasses.fields(cls)}, name
    assert isinstance(load_params(REPO / "params.yaml"), Params)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"finetune": {"learning_rate": 0.1}}, "finetune: unknown key(s) learning_rate"),
        ({"finetune": {"epochs": "ten"}}, "finetune.epochs: expected an integer"),
        ({"finetune": {"epochs": 2.5}}, "finetune.epochs: expected an integer"),
        ({"finetune": {"augment": "yes"}}, "finetune.augment: expected true or false"),
        ({"finetune": {"strategy": "magic"}}, "'magic' is not one of"),
        ({"finetune": {"c_grid": 1.0}}, "finetune.c_grid: expected a list"),
        ({"training": {}}, "unknown section(s) training"),
        ({"ingest": ["folder"]}, "ingest: expected a mapping"),
    ],
)
def test_bad_params_name_the_file_section_and_key(tmp_path, raw, fragment):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_ints_are_accepted_as_floats_and_null_for_optional():
    params = params_from_dict({"finetune": {"lr": 1}, "ingest": {"shots_per_class": None}})
    assert params.finetune.lr == 1.0 and isinstance(params.finetune.lr, float)
    assert params.ingest.shots_per_class is None


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
