"""The rules data/prepared must pass, as a Great Expectations suite over the manifest.

Every file is decoded once with images.read_image (the decoder training uses, with the
decompression-bomb guard `validate.max_pixels`); the results become columns of the manifest
(`decodes`, `problem`, `min_side`, `dup_across_splits`) and a per-class table (`n_train`,
`ratio_to_smallest`), and GX expectations over the two tables state the rules. Whatever the
outcome, reports/validate.json lists each rule with its observed value and offenders, and
reports/quarantine.csv lists every offending file; on failure ValidationError stops the pipeline
(graft.stages.validate writes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from graft.core.config import ValidateParams
from graft.core.layout import Layout
from graft.data.images import ImageError, read_image
from graft.data.manifest import SPLITS, UNLABELED, class_names

SHOW_FILES = 10  # offending files named in the error message; the reports list all of them


class ValidationError(ValueError):
    """The data broke at least one rule; the message names the rules and offending files."""


@dataclass
class Check:
    """One rule's outcome, as written to reports/validate.json."""

    rule: str
    expectation: str
    success: bool
    observed: Any
    files: list[str] = field(default_factory=list)  # offending manifest paths
    classes: list[str] = field(default_factory=list)  # offending labels (class-level rules)


def check_manifest(df: pd.DataFrame, root: Path, v: ValidateParams
                   ) -> tuple[pd.DataFrame, pd.DataFrame, list[Check]]:
    """(file table, class table, every rule's Check) for the manifest `df` whose paths start at
    `root`; each class-level Check observes the number its rule bounds."""
    files = file_table(df, root, v.max_pixels)
    classes = class_table(df)
    checks = run_suite(files, classes, class_names(df), v)
    for check in checks:  # the number the rule bounds, rather than GX's list of offenders
        if check.rule == "max_imbalance":
            check.observed = float(classes["ratio_to_smallest"].max()) if len(classes) else None
        elif check.rule == "at_least_two_classes":
            check.classes = classes["label"].tolist()
        elif check.rule == "min_per_class":
            check.observed = int(classes["n_train"].min()) if len(classes) else None
    return files, classes, checks


def file_table(df: pd.DataFrame, root: Path, max_pixels: int) -> pd.DataFrame:
    """The manifest plus what decoding each file found: decodes, problem, min_side (pixels),
    and dup_across_splits (its sha256 also appears in another split)."""
    decodes, problems, sides = [], [], []
    for rel in df["path"]:
        try:
            img = read_image(root / rel, max_pixels)
        except ImageError as exc:
            decodes.append(False)
            problems.append(exc.problem)
            sides.append(None)
        else:
            decodes.append(True)
            problems.append("")
            sides.append(min(img.size))
    out = df.copy()
    out["decodes"] = decodes
    out["problem"] = problems
    out["min_side"] = pd.array(sides, dtype="Int64")  # <NA> where the file does not decode
    out["dup_across_splits"] = out.groupby("sha256")["split"].transform("nunique") > 1
    return out


def class_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per training class: n_train and ratio_to_smallest (n_train / smallest n_train)."""
    counts = df.loc[df["split"] == "train", "label"].value_counts().sort_index()
    table = pd.DataFrame({"label": counts.index.astype(str), "n_train": counts.to_numpy()})
    table["ratio_to_smallest"] = table["n_train"] / max(int(table["n_train"].min()), 1) \
        if len(table) else pd.Series(dtype=float)
    return table


def _expectations(classes: list[str], v: ValidateParams) -> tuple[list, list]:
    """(per-file expectations, per-class expectations), each tagged with its rule name."""
    import great_expectations as gx  # imported here: ~2 s, and only this stage needs it

    e = gx.expectations
    is_labelled = {"row_condition": f'split!="{UNLABELED}"', "condition_parser": "pandas"}
    per_file = [
        e.ExpectColumnValuesToBeInSet(column="split", value_set=[*SPLITS, UNLABELED],
                                      meta={"rule": "split_valid"}),
        e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True],
                                      meta={"rule": "decodes"}),
        e.ExpectColumnValuesToBeBetween(column="min_side", min_value=v.min_side,
                                        meta={"rule": "min_side"}),
        e.ExpectColumnValuesToBeInSet(column="label", value_set=classes, **is_labelled,
                                      meta={"rule": "label_in_train_classes"}),
        # an unlabelled row with a label would be trained on by nobody and suggested anyway
        e.ExpectColumnValuesToBeInSet(column="label", value_set=[""],
                                      row_condition=f'split=="{UNLABELED}"',
                                      condition_parser="pandas",
                                      meta={"rule": "unlabeled_without_label"}),
        e.ExpectColumnValuesToBeInSet(column="dup_across_splits", value_set=[False],
                                      meta={"rule": "no_content_in_two_splits"}),
    ]
    per_class = [
        e.ExpectTableRowCountToBeBetween(min_value=2, meta={"rule": "at_least_two_classes"}),
        e.ExpectColumnValuesToBeBetween(column="n_train", min_value=v.min_per_class,
                                        meta={"rule": "min_per_class"}),
        e.ExpectColumnValuesToBeBetween(column="ratio_to_smallest", max_value=v.max_imbalance,
                                        meta={"rule": "max_imbalance"}),
    ]
    return per_file, per_class


def run_suite(files: pd.DataFrame, classes: pd.DataFrame, names: list[str],
              v: ValidateParams) -> list[Check]:
    """Run both suites in an ephemeral GX context (nothing written to disk, no network)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(  # in memory only: no docs site, no progress bars on stderr
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas("graft")
    per_file, per_class = _expectations(names, v)
    checks = []
    for table, key, expectations in (("files", "path", per_file),
                                     ("classes", "label", per_class)):
        suite = context.suites.add(gx.ExpectationSuite(name=f"graft_{table}"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch_def = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"graft_{table}", data=batch_def, suite=suite))
        frame = files if table == "files" else classes
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [key]})
        checks += [_check(r, key) for r in result.results]
    return checks


def _check(r: Any, key: str) -> Check:
    config = r.expectation_config
    res = r.result or {}
    offenders = [str(row[key]) for row in res.get("unexpected_index_list") or []]
    if "observed_value" in res:
        observed = res["observed_value"]
    else:
        observed = {"unexpected": res.get("unexpected_count"), "of": res.get("element_count"),
                    "values": sorted({str(x) for x in res.get("unexpected_list") or []})[:20]}
    if r.exception_info and r.exception_info.get("raised_exception"):
        observed = {"error": r.exception_info.get("exception_message")}
    check = Check(config.meta["rule"], config.type, bool(r.success), observed)
    if key == "path":
        check.files = offenders
    else:
        check.classes = offenders
    return check


def quarantine_rows(files: pd.DataFrame, checks: list[Check], v: ValidateParams,
                    origins: dict[str, str] | None = None) -> list[list[str]]:
    """path, rule, problem, origin for each offending file: the problem in words, the origin
    the user's own file it was copied from (graft.data.manifest.read_origins; '' unknown)."""
    origins = origins or {}
    by_path = files.drop_duplicates("path").set_index("path")
    rows = []
    for check in checks:
        for path in check.files:
            row = by_path.loc[path]
            problem = {
                "decodes": row["problem"],
                "min_side": f"shortest side {row['min_side']} px < min_side {v.min_side}",
                "label_in_train_classes": f"label {row['label']!r} ({row['split']}) is not a "
                                          "training class",
                "no_content_in_two_splits": f"sha256 {row['sha256'][:12]}… also in another split",
                "split_valid": f"split {row['split']!r} is not one of "
                               f"{', '.join([*SPLITS, UNLABELED])}",
                "unlabeled_without_label": f"label {row['label']!r} on an unlabelled image",
            }.get(check.rule, check.rule)
            rows.append([path, check.rule, problem, origins.get(path, "")])
    return rows


def failure_message(layout: Layout, failed: list[Check], quarantine: list[list[str]]) -> str:
    lines = [f"{layout.manifest}: validation failed ({len(failed)} rule(s)); see "
             f"{layout.report('validate.json')} and {layout.report('quarantine.csv')}"]
    for check in failed:
        if check.files:
            problems = [f"{origin} ({problem}), copied as {layout.prepared / path}" if origin
                        else f"{layout.prepared / path} ({problem})"
                        for path, rule, problem, origin in quarantine if rule == check.rule]
            more = len(problems) - SHOW_FILES
            tail = f"; and {more} more" if more > 0 else ""
            lines.append(f"  {check.rule}: {len(problems)} file(s): "
                         + "; ".join(problems[:SHOW_FILES]) + tail)
        else:
            classes = f"; classes: {', '.join(check.classes)}" if check.classes else ""
            lines.append(f"  {check.rule}: observed {check.observed}{classes}")
    return "\n".join(lines)
