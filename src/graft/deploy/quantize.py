"""Reduced-precision copies of an exported fp32 .onnx: INT8 (static, QDQ) for CPUs, FP16 for GPUs.

INT8 follows onnxruntime's recipe for depthwise networks such as EfficientNet-Lite: shape
inference and graph clean-up (`quant_pre_process`) first, then static quantisation in QDQ format
with per-channel weights (per-tensor scales on depthwise convolutions are what make "INT8
EfficientNet" lose tens of points). Activation ranges come from calibration images that the
caller decodes with graft.data.images, so the calibration data sees exactly the training
preprocessing. Whether the result is good enough is decided by the export stage's gate, not here.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.progress import Progress

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class QuantizeError(ValueError):
    """A quantisation that cannot run; the message names the model file and the reason."""


class _ArrayReader:
    """onnxruntime's CalibrationDataReader protocol over an in-memory float32 (N, 3, S, S)."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int) -> None:
        # Equal batches: onnxruntime's histogram calibrators (entropy, percentile) stack the
        # per-batch outputs and fail on a shorter last batch.
        batch_size = max(d for d in range(1, min(batch_size, len(x)) + 1) if len(x) % d == 0)
        self._batches: Iterator[np.ndarray] = iter(
            [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
        )
        self._input_name = input_name
        self._bar = Progress("export: INT8 calibration", len(x), "img").__enter__()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            self._bar.close()  # the ranges are computed after the last batch (silently)
            return None
        self._bar.update(len(batch))
        return {self._input_name: np.ascontiguousarray(batch)}

    def rewind(self) -> None:  # part of the protocol; one pass is all static quantisation needs
        raise NotImplementedError("calibration data is read once")


def quantize_int8(
    fp32_path: Path | str,
    out_path: Path | str,
    calibration: np.ndarray,
    method: str = "minmax",
    per_channel: bool = True,
    reduce_range: bool = False,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Write a statically quantised QDQ copy of `fp32_path` to `out_path` (in place; callers that
    publish write to a temporary path). `calibration` is normalised float32 (N, 3, S, S).
    Returns the settings used, for the metrics and the file's metadata."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise QuantizeError(f"{fp32_path}: calibration method {method!r} is not one of "
                            f"{', '.join(CALIBRATION_METHODS)}")
    if len(calibration) == 0:
        raise QuantizeError(f"{fp32_path}: INT8 calibration needs at least one training image")
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="graft-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # The classifier stays float: a few-shot head has small logit margins that 8-bit
        # logits flip (measured on the Fashion-MNIST demo: 2.7 points lost with it quantised,
        # under 1 without), and at 1280×C multiply-adds it costs nothing to keep.
        head = [n.name for n in onnx.load(str(prepared)).graph.node
                if n.op_type in ("Gemm", "MatMul")]
        with contextlib.redirect_stdout(sys.stderr):  # its progress prints, not our output
            quantize_static(
                str(prepared), str(out_path),
                _ArrayReader(input_name, calibration.astype(np.float32), batch_size),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,  # 7-bit weights: for CPUs without VNNI (U8S8 saturation)
                activation_type=types[activation_type],
                weight_type=types[weight_type],
                calibrate_method=methods[method],
                nodes_to_exclude=head,
                calibration_providers=["CPUExecutionProvider"],
                # minmax merges ranges every 16 batches instead of holding every activation
                extra_options={"CalibMaxIntermediateOutputs": 16},
            )
    return {"calibration": method, "n_calibration_images": int(len(calibration)),
            "per_channel": per_channel, "reduce_range": reduce_range, "float_nodes": head,
            "activation_type": activation_type, "weight_type": weight_type, "format": "QDQ"}


def to_fp16(fp32_path: Path | str, out_path: Path | str) -> dict[str, Any]:
    """Write an FP16 copy of `fp32_path` (weights and maths in half precision) whose input and
    output stay float32, so callers feed and read it exactly like the fp32 model."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from graft.models.onnx_graph import sort_nodes

    proto = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    sort_nodes(proto.graph)
    onnx.save(proto, str(out_path))
    return {"io_types": "float32"}
