"""graft.deploy.gates: the fp32 parity check is relative to the logits' scale (a temperature-
scaled head has large logits, and float32 rounding grows with them) and stays strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graft.deploy.gates import check_parity
from graft.deploy.onnx_export import ExportError

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal((200, 5))


@pytest.mark.parametrize("temperature", [1.0, 1000.0])
def test_float32_rounding_passes_at_any_logit_scale(temperature):
    reference = LOGITS * temperature
    exported = reference.astype(np.float32).astype(np.float64) * (1 + 1e-6)
    result = check_parity(reference, exported, 1e-4, Path("model.onnx"), "torch")
    assert result["top1_flips"] == 0 and result["max_scaled_diff"] <= 1e-4
    if temperature > 1:
        assert result["max_abs_diff"] > 1e-4  # what an absolute threshold used to refuse


def test_a_wrong_graph_fails_at_any_logit_scale():
    for temperature in (1.0, 1000.0):
        reference = LOGITS * temperature
        with pytest.raises(ExportError, match=r"model\.onnx: parity check against torch failed"):
            check_parity(reference, reference * 1.01, 1e-4, Path("model.onnx"), "torch")


def test_a_near_tie_tipped_by_rounding_is_not_a_flip_but_a_real_one_is():
    reference = np.array([[2.0, 2.0 + 1e-7, -1.0], [3.0, 0.0, 0.0]])
    tipped = np.array([[2.0 + 1e-7, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert check_parity(reference, tipped, 1e-4, Path("m.onnx"), "torch")["top1_flips"] == 0
    flipped = np.array([[2.0, 2.0, -1.0], [3.0, 3.0 + 1e-5, 0.0]])  # within 1e-4·3 of a logit,
    with pytest.raises(ExportError, match=r"top-1 changed on 1 image"):  # but a lost class
        check_parity(reference, flipped, 1e-6, Path("m.onnx"), "torch")
