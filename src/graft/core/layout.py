"""Where every input and output of a Graft project lives, relative to the project root.

This is the one place a project path is spelled in code. dvc.yaml declares the stages' paths as
deps and outs; `tests/unit/test_dvc_yaml.py` checks that the two agree. The model registry's
own folders (champion/, history/) are named by graft.lifecycle.registry under `models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("ingest", "validate", "features", "audit", "finetune", "evaluate", "export")


@dataclass(frozen=True)
class Layout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    # data/
    @property
    def prepared(self) -> Path:
        """Ingested images plus manifest.csv (a DVC output)."""
        return self.root / "data" / "prepared"

    @property
    def manifest(self) -> Path:
        return self.prepared / "manifest.csv"

    @property
    def features(self) -> Path:
        """Embedding store, one .npz per (backbone, image size), persisted across runs."""
        return self.root / "data" / "features"

    # models/
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def model(self) -> Path:
        return self.models / "model.pt"

    @property
    def baseline_model(self) -> Path:
        """The best from-scratch baseline (evaluate stage), shipped under use_baseline."""
        return self.models / "baseline.pt"

    @property
    def onnx(self) -> Path:
        return self.models / "model.onnx"

    @property
    def onnx_int8(self) -> Path:
        return self.models / "model.int8.onnx"

    @property
    def onnx_fp16(self) -> Path:
        return self.models / "model.fp16.onnx"

    def onnx_variant(self, precision: str) -> Path:
        """model.onnx, model.int8.onnx or model.fp16.onnx for 'fp32', 'int8', 'fp16'."""
        paths = {"fp32": self.onnx, "int8": self.onnx_int8, "fp16": self.onnx_fp16}
        if precision not in paths:
            raise ValueError(f"unknown precision {precision!r}; one of {', '.join(paths)}")
        return paths[precision]

    @property
    def bundle(self) -> Path:
        """`graft bundle`'s default output folder (and .zip beside it)."""
        return self.root / "bundle"

    # reports/, plots/, metrics/
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def report(self, name: str) -> Path:
        """reports/<name>: ingest.json, validate.json, quarantine.csv, audit.md, evaluate.md,
        retrain.md …"""
        return self.reports / name

    @property
    def label_issues(self) -> Path:
        """The audit stage's suspected label errors, most suspicious first."""
        return self.reports / "label_issues.csv"

    @property
    def near_duplicates(self) -> Path:
        """The audit stage's near-copies across splits (evaluate reads it)."""
        return self.reports / "near_duplicates.csv"

    @property
    def suggestions(self) -> Path:
        """`graft suggest`'s ranked unlabelled images (not a DVC output)."""
        return self.reports / "suggest.csv"

    def retrain_log(self, tool: str) -> Path:
        """reports/retrain-<tool>.log: what the `dvc` or `git` commands of a retrain run said."""
        return self.reports / f"retrain-{tool}.log"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        """plots/<name>: finetune.csv, confusion.csv, confusion.png."""
        return self.plots / name

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return self.metrics_dir / f"{stage}.json"

    @property
    def rank(self) -> Path:
        """`graft rank`'s backbone ranking (not a DVC stage, so not under `metrics(stage)`)."""
        return self.metrics_dir / "rank.json"

    def bench(self, train: bool = False) -> Path:
        """`graft bench`'s report: inference, or with `train` the fine-tuning speed."""
        return self.metrics_dir / ("bench_train.json" if train else "bench.json")
