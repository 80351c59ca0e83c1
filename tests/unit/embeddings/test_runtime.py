"""graft.embeddings.runtime: the store's backbone runs in onnxruntime on the CPU, exported once
per (backbone, size), its parity with torch checked at export, re-exported when its weights
change; a graph that disagrees with torch is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graft.data.images import Preprocessing
from graft.embeddings.runtime import EmbedderError, graph_path, load_embedder, record_of

PRE = Preprocessing(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + torch.rand_like(x.mean(dim=(2, 3)))


def sample() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)


WANTED = {"backbone": "tiny", "image_size": 8, "weights_sha256": "a" * 64, "opset": 17}


def test_exported_once_checked_and_equal_to_torch(tmp_path):
    store = tmp_path / "tiny-8.npz"
    built = []

    def model() -> nn.Module:
        built.append(1)
        return tiny()

    first = load_embedder(store, model, PRE, WANTED, sample)
    assert first.runtime == "onnxruntime" and graph_path(store).exists()
    record = record_of(store)
    assert record["weights_sha256"] == "a" * 64 and record["parity"]["n_images"] == 4
    assert record["parity"]["relative"] <= record["parity"]["allowed"]
    x = sample()
    with torch.inference_mode():
        expected = tiny().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(first(x), expected, atol=1e-5)

    mtime = graph_path(store).stat().st_mtime_ns
    again = load_embedder(store, model, PRE, WANTED, sample)
    assert built == [1] and graph_path(store).stat().st_mtime_ns == mtime  # not re-exported
    np.testing.assert_array_equal(again(x), first(x))

    load_embedder(store, model, PRE, {**WANTED, "weights_sha256": "b" * 64}, sample)
    assert built == [1, 1] and record_of(store)["weights_sha256"] == "b" * 64  # new weights


def test_a_graph_that_disagrees_with_torch_is_refused(tmp_path):
    store = tmp_path / "noisy-8.npz"
    with pytest.raises(EmbedderError, match=r"noisy-8\.onnx: the exported tiny differs"):
        load_embedder(store, Noisy, PRE, WANTED, sample)
    assert not graph_path(store).exists() and record_of(store) is None
