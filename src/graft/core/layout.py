"""Where every input and output of a Graft project lives, relative to the project root.

This is the one place a project path is spelled in code. dvc.yaml declares the stages' paths as
deps and outs; `tests/unit/test_dvc_yaml.py` checks that the two agree. The model registry's
own folders (champion/, history/) are named by graft.lifecycle.registry under `models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HEADLINES = ("scores", "onnx")  # written by evaluate and export
STAGES = ("ingest", "validate", "features", "audit", "finetune", "evaluate", "export")
# the export's ONNX set by precision: the same names in models/ and in a registry version
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


@dataclass(frozen=True)
class Layout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def dvc_lock(self) -> Path:
        """What `dvc repro` last ran with: each stage's params and dependency hashes."""
        return self.root / "dvc.lock"

    # data/
    @property
    def prepared(self) -> Path:
        """Ingested images plus manifest.csv (a DVC output)."""
        return self.root / "data" / "prepared"

    @property
    def manifest(self) -> Path:
        return self.prepared / "manifest.csv"

    @property
    def origins(self) -> Path:
        """Where each prepared image came from (the user's own path), for messages and
        reports/quarantine.csv: data/prepared/origins.csv, path → origin."""
        return self.prepared / "origins.csv"

    @property
    def features(self) -> Path:
        """Embedding store, one .npz per (backbone, image size), persisted across runs."""
        return self.root / "data" / "features"

    @property
    def variants(self) -> Path:
        """A frozen backbone's INT8 / FP16 copies and their embeddings (graft.deploy.variants),
        persisted across runs."""
        return self.root / "data" / "variants"

    @property
    def baselines(self) -> Path:
        """The baselines' kept results, by what they depend on
        (graft.evaluation.baseline_cache), persisted across runs."""
        return self.root / "data" / "baselines"

    # models/
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def model(self) -> Path:
        return self.models / "model.pt"

    @property
    def retrain_params(self) -> Path:
        """The user's own params.yaml while a retrain run's overrides are in it (a journal)."""
        return self.models / ".retrain-params.json"

    @property
    def baseline_model(self) -> Path:
        """The best from-scratch baseline (evaluate stage), shipped under use_baseline."""
        return self.models / "baseline.pt"

    @property
    def onnx(self) -> Path:
        return self.models / ONNX_FILES["fp32"]

    @property
    def onnx_int8(self) -> Path:
        return self.models / ONNX_FILES["int8"]

    @property
    def onnx_fp16(self) -> Path:
        return self.models / ONNX_FILES["fp16"]

    def onnx_variant(self, precision: str) -> Path:
        """model.onnx, model.int8.onnx or model.fp16.onnx for 'fp32', 'int8', 'fp16'."""
        if precision not in ONNX_FILES:
            raise ValueError(f"unknown precision {precision!r}; one of {', '.join(ONNX_FILES)}")
        return self.models / ONNX_FILES[precision]

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

    def metrics(self, name: str) -> Path:
        """metrics/<stage>.json (everything a stage measured), or one of HEADLINES: the few
        figures DVC shows (`dvc metrics show`, `dvc exp show`)."""
        if name not in STAGES and name not in HEADLINES:
            raise ValueError(f"unknown metrics {name!r}; they are {', '.join(STAGES + HEADLINES)}")
        return self.metrics_dir / f"{name}.json"

    @property
    def rank(self) -> Path:
        """`graft rank`'s backbone ranking (not a DVC stage, so not under `metrics(stage)`)."""
        return self.metrics_dir / "rank.json"

    # what Graft writes: a source may not lie inside, nor a bundle be written into, these
    @property
    def outputs(self) -> tuple[Path, ...]:
        """The folders Graft's stages and commands write (DVC outputs among them); data/ itself
        is not one: users keep their raw images there (data/raw, tracked with `dvc add`)."""
        return (self.prepared, self.features, self.variants, self.baselines, self.models,
                self.reports, self.plots, self.metrics_dir, self.bundle)

    def output_containing(self, path: Path | str) -> Path | None:
        """The output folder that `path` (resolved, symlinks followed) lies in, or None."""
        target = Path(path).resolve()
        return next((out for out in self.outputs if target.is_relative_to(out.resolve())),
                    None)

    @property
    def scratch_folders(self) -> tuple[Path, ...]:
        """Where a stage's atomic writes leave temporary files when the run is killed: cleaned
        (graft.core.files.clean_temp) when the next stage starts."""
        return (self.root / "data", self.prepared, self.features, self.variants,
                self.baselines, self.models, self.reports, self.plots, self.metrics_dir)

    def bench(self, train: bool = False) -> Path:
        """`graft bench`'s report: inference, or with `train` the fine-tuning speed."""
        return self.metrics_dir / ("bench_train.json" if train else "bench.json")
