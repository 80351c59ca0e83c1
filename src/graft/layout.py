"""Where each stage's inputs and outputs live, relative to the project root.

dvc.yaml declares the same paths as deps and outs; `tests/unit/test_dvc_yaml.py` checks that the
two agree, so this is the one place a path is spelled in code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("ingest", "validate", "features", "finetune", "evaluate", "export")


@dataclass(frozen=True)
class Layout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

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

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def rank(self) -> Path:
        """`graft rank`'s backbone ranking (not a DVC stage, so not under `metrics(stage)`)."""
        return self.root / "metrics" / "rank.json"

    def metrics(self, stage: str) -> Path:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return self.root / "metrics" / f"{stage}.json"
