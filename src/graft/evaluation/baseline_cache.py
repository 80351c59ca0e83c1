"""The baselines' results, kept by what they depend on: a rerun that changed only the model (a
finetune.* param) scores it against the same baselines without training them again.

A baseline is a function of the manifest's images and labels (each row's content hash, split
and label, in order), the evaluate params it reads, its code, the libraries that run it and the
device it trained on; `data/baselines/<key>/` holds, for that key, each baseline's network as a
Graft checkpoint (safetensors: data, never code) with what it chose on val, and its
probabilities on the test split. A kept entry that cannot be read is a miss: the baselines are
trained again and the entry rewritten.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import torch

from graft.core.config import EvaluateParams
from graft.core.files import temp_dir
from graft.evaluation.baselines import BASELINES, BaselineResult, train_baselines
from graft.models import scratch
from graft.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

# the evaluate params a baseline reads (bootstrap, batch_size and the rest do not change it)
BASELINE_KEYS = ("baseline_image_size", "logreg_c_grid", "cnn_epochs", "cnn_batch_size",
                 "cnn_lr", "cnn_weight_decay", "seed")
# the code behind a baseline's numbers: its training, its networks, its early stopping, decoding
CODE = ("graft.evaluation.baselines", "graft.models.scratch", "graft.strategies.early_stopping",
        "graft.data.images")
KEEP = 3  # entries kept (an experiment that goes back and forth between two manifests)


def cached_baselines(p: EvaluateParams, df: pd.DataFrame, manifest: Path, names: list[str],
                     device: torch.device, folder: Path) -> tuple[dict[str, BaselineResult], bool]:
    """(both baselines' results, whether they were kept from an earlier run): the entry of
    `folder` for these inputs, else trained now (graft.evaluation.baselines) and kept."""
    entry = folder / key(p, df, names, device)
    kept = _load(entry)
    if kept is not None:
        entry.touch()  # recently used: the last to be pruned
        return kept, True
    results = train_baselines(p, df, manifest, names, device)
    _save(entry, results, names, p.baseline_image_size)
    _prune(folder)
    return results, False


def key(p: EvaluateParams, df: pd.DataFrame, names: list[str], device: torch.device) -> str:
    """sha256 of everything a baseline's result depends on."""
    code = {name: hashlib.sha256(Path(importlib.import_module(name).__file__).read_bytes())
            .hexdigest() for name in CODE}
    inputs = {
        "rows": df[["sha256", "split", "label"]].astype(str).to_numpy().tolist(),
        "classes": names,
        "params": {k: getattr(p, k) for k in BASELINE_KEYS},
        "code": code,
        "versions": {"torch": torch.__version__, "sklearn": sklearn.__version__,
                     "numpy": np.__version__},
        "device": device.type,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _load(entry: Path) -> dict[str, BaselineResult] | None:
    if entry.is_symlink():  # not an entry: replaced, so nothing outside is trusted or touched
        return None
    if not entry.is_dir() or not (entry / "proba.npz").is_file():  # a FIFO would block
        return None
    try:
        with np.load(entry / "proba.npz", allow_pickle=False) as npz:
            proba = {name: npz[name] for name in BASELINES}
        results = {}
        for name in BASELINES:
            model, meta = load_checkpoint(entry / f"{name}.pt")
            results[name] = BaselineResult(proba[name], meta["info"], model)
    except (OSError, ValueError, KeyError, CheckpointError):
        return None
    return results


def _save(entry: Path, results: dict[str, BaselineResult], names: list[str], size: int) -> None:
    """Written in a temporary folder renamed into place: a killed run leaves no half entry."""
    tmp = temp_dir(entry)
    try:
        for name, result in results.items():
            save_checkpoint(tmp / f"{name}.pt", result.model, name, names,
                            scratch.preprocessing(size),
                            network={"kind": "baseline", "name": name, "size": size},
                            **result.info)
        with open(tmp / "proba.npz", "wb") as fh:
            np.savez(fh, **{name: r.proba for name, r in results.items()})
        if entry.is_symlink() or entry.is_file():  # not an entry: replaced, never followed
            entry.unlink()
        elif entry.is_dir():  # unreadable: replaced
            shutil.rmtree(entry)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(folder: Path) -> None:
    entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)

