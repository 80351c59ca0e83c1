"""params.yaml loading: every key is known, typed, within its declared range, and present in the
shipped params.yaml."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from graft.core.config import SECTIONS, ConfigError, Params, load_params, params_from_dict
from tests.fixtures import REPO, finetune_params, unchanged


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
        ({"finetune": {"epochs": 0}}, "finetune.epochs = 0 must be in [1, 100000]"),
        ({"finetune": {"augment": "yes"}}, "finetune.augment: expected true or false"),
        ({"finetune": {"class_weight": "auto"}}, "finetune.class_weight: 'auto' is not one of"),
        ({"finetune": {"c_grid": 1.0}}, "finetune.c_grid: expected a list"),
        ({"training": {}}, "unknown section(s) training"),
        ({"ingest": ["folder"]}, "ingest: expected a mapping"),
    ],
)
def test_bad_params_name_the_file_section_and_key(tmp_path, raw, fragment):
    # finetune.strategy is a name only the strategy registry knows: tests/unit/strategies/
    # test_registry.py checks that an unknown one is refused naming the file
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("ingest:\n  shots_per_clas: 5\n", ["ingest: unknown key(s) shots_per_clas"]),
        ("validate:\n  min_side: eight\n", ["validate.min_side: expected an integer"]),
        ("validate:\n  max_imbalance: [1]\n", ["validate.max_imbalance: expected a number"]),
        ("ingest:\n  source: s3\n", ["ingest.source: 's3' is not one of"]),
    ],
)
def test_bad_params_yaml_names_file_section_and_key(tmp_path, text, fragments):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with unchanged(tmp_path), pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith(str(path))
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize(("section", "rule"), [
    # the training loop
    ({"epochs": 0}, "in [1, 100000]"), ({"c_grid": []}, "a non-empty list of values > 0"),
    ({"c_grid": [1.0, -1.0]}, "a non-empty list of values > 0"),
    ({"freeze_blocks": 8}, "in [0, 7]"),
    ({"lr": 0}, "> 0"), ({"l2sp": -1.0}, "≥ 0"), ({"patience": 0}, "in [1, 100000]"),
    # the network strategies' options
    ({"llrd": 0.0}, "in (0, 1]"), ({"llrd": 1.5}, "in (0, 1]"),
    ({"label_smoothing": 1.0}, "in [0, 1)"), ({"mixup": -0.1}, "≥ 0"), ({"cutmix": -1.0}, "≥ 0"),
    ({"budget_s": 0}, "> 0"),
    # the feature strategies' grids, the ensemble's lists
    ({"svm_c_grid": []}, "a non-empty list of values > 0"),
    ({"svm_gamma_grid": [0.0]}, "a non-empty list of values > 0"),
    ({"ensemble_backbones": []}, "a non-empty list of values"),
])
def test_out_of_range_values_are_rejected_when_params_are_loaded(section: dict, rule: str) -> None:
    (key, value), = section.items()
    coerced = float(value) if key in ("lr", "budget_s") else value  # ints accepted as floats
    with pytest.raises(ConfigError, match=re.escape(
            f"params: finetune.{key} = {coerced!r} must be {rule}") + "$"):
        finetune_params(**section)


@pytest.mark.parametrize("section", [{"lr": "fast"}, {"class_weight": "auto"}, {"bn_train": "yes"},
                                     {"svm_kernels": ["poly"]}, {"sampler": "weighted"}])
def test_wrong_types_and_unknown_choices_are_rejected(section: dict) -> None:
    with pytest.raises(ConfigError, match=f"params: finetune.{next(iter(section))}"):
        finetune_params(**section)


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
