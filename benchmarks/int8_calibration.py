"""INT8 calibration choices against fp32, on a project where `dvc repro` has run (a frozen
backbone: the features store's graph and a feature strategy's model.pt).

Each setting quantises the store's backbone graph alone (as the export stage does), embeds the
test images with it and scores the model's head on those embeddings: test accuracy and top-1
agreement with fp32 (the head on the store's embeddings), one JSON line per setting.

    python benchmarks/int8_calibration.py --root .            # every setting
    python benchmarks/int8_calibration.py --root . minmax ema_trainval
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.layout import Layout
from graft.data.manifest import absolute_paths, encode_labels, read_manifest
from graft.deploy.gates import run_on_images
from graft.embeddings.runtime import graph_path
from graft.embeddings.store import embeddings, read_store, store_file
from graft.models.checkpoint import load_frozen_head
from graft.models.heads import head_logits
from graft.models.onnx_graph import create_session

EMA = {"CalibMovingAverage": True, "CalibMovingAverageConstant": 0.01}
# name: (calibration splits, calibration method, extra options, weight type)
SETTINGS: dict[str, tuple[tuple[str, ...], str, dict[str, Any], str]] = {
    "minmax": (("train",), "MinMax", {}, "QInt8"),  # the export stage's default
    "minmax_trainval": (("train", "val"), "MinMax", {}, "QInt8"),
    "ema": (("train",), "MinMax", EMA, "QInt8"),
    "ema_trainval": (("train", "val"), "MinMax", EMA, "QInt8"),
    "ema_trainval_u8_weights": (("train", "val"), "MinMax", EMA, "QUInt8"),
    "percentile": (("train",), "Percentile", {}, "QInt8"),
}


class _Reader:
    def __init__(self, x: np.ndarray, batch: int = 10) -> None:
        self._batches = iter([x[i : i + batch] for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"image": batch}


def main() -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("settings", nargs="*", help=f"of {', '.join(SETTINGS)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        ap.error(f"unknown setting(s) {', '.join(sorted(unknown))}; one of {', '.join(SETTINGS)}")
    layout = Layout(args.root)
    loaded = load_frozen_head(layout.model)
    if loaded is None:
        raise SystemExit(f"{layout.model}: not a frozen backbone with a head (a feature strategy)")
    head, meta = loaded
    pre = meta["preprocessing"]
    df = read_manifest(layout.manifest)
    test = df[df["split"] == "test"]
    y = encode_labels(test["label"], list(meta["class_names"]), layout.manifest, "test", "model")
    store = store_file(layout, meta["backbone"], pre.size)
    fp32_logits = head_logits(head.classifier, embeddings(read_store(store), test))
    fp32 = fp32_logits.argmax(1)
    top2 = np.sort(fp32_logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # how far fp32's choice is from its runner-up
    lowest_decile = margin < np.percentile(margin, 10)
    paths = absolute_paths(test, layout.manifest)
    with tempfile.TemporaryDirectory(prefix="graft-int8-") as tmp:
        prepared = f"{tmp}/prepared.onnx"
        quant_pre_process(str(graph_path(store)), prepared, skip_symbolic_shape=True)
        for name in args.settings or SETTINGS:
            splits, method, extra, weights = SETTINGS[name]
            calibration = df[df["split"].isin(splits)]
            started = time.perf_counter()
            quantize_static(
                prepared, f"{tmp}/{name}.onnx",
                _Reader(pre.load(absolute_paths(calibration, layout.manifest))),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weights),
                calibrate_method=getattr(CalibrationMethod, method),
                extra_options={"CalibMaxIntermediateOutputs": 16, **extra})
            seconds = time.perf_counter() - started
            session = create_session(f"{tmp}/{name}.onnx", ["CPUExecutionProvider"])
            vectors = run_on_images({name: lambda x, s=session: s.run(None, {"image": x})[0]},
                                    paths, pre, 32, None, f"int8 {name}")[name]
            int8 = head_logits(head.classifier, vectors).argmax(1)
            flips = int8 != fp32
            print(json.dumps({
                "setting": name, "calibration_images": len(calibration),
                "accuracy": float((int8 == y).mean()), "fp32_accuracy": float((fp32 == y).mean()),
                "top1_agreement": float(1 - flips.mean()), "flips": int(flips.sum()),
                # where the flips are: near-ties of fp32's own choice, or anywhere
                "flips_in_fp32_lowest_margin_decile": float(lowest_decile[flips].mean())
                if flips.any() else None,
                "median_fp32_margin": {"all": float(np.median(margin)),
                                       "flipped": float(np.median(margin[flips]))
                                       if flips.any() else None},
                "quantise_s": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
