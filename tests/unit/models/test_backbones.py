"""The pretrained weights are really loaded, for every registered backbone; `timm:<name>` backbones
load exactly their local weights file (a tiny random timm model stands in for the download)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torch import nn

from graft.models.backbones import BACKBONES, WeightsError, create_model, get_spec
from tests.fixtures import TIMM_ARCH, TIMM_NAME, save_timm_weights


def _sample(name: str) -> Image.Image:
    data = load_sample_images()
    index = next(i for i, f in enumerate(data.filenames) if f.endswith(name))
    return Image.fromarray(data.images[index])


@torch.inference_mode()
def test_lite0_classifies_the_sample_flower_as_daisy():
    model = create_model("efficientnet_lite0", num_classes=1000).eval()
    pre = get_spec("efficientnet_lite0").preprocessing()
    x = torch.from_numpy(pre.to_array(_sample("flower.jpg")))
    logits = model(x[None])
    assert logits.argmax().item() == 985  # ImageNet class 985: daisy


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_loads_its_imagenet_weights(name):
    spec = get_spec(name)
    model = create_model(name, num_classes=1000).eval()
    random_init = create_model(name, num_classes=1000, pretrained=False)
    assert not torch.equal(model.conv_stem.weight, random_init.conv_stem.weight)
    with torch.inference_mode():
        x = torch.from_numpy(spec.preprocessing().to_array(_sample("china.jpg")))
        probs = model(x[None]).softmax(-1)[0]
    # The sample photo of a Chinese temple: ImageNet class 698 (palace) for all three, with a
    # confidence no random network reaches (uniform is 0.001). (Lite2 calls the flower close-up
    # a honeycomb, 599, so the daisy check is Lite0's alone.)
    assert probs.argmax().item() == 698 and probs.max() > 0.2


def test_feature_extractor_and_fresh_head_shapes():
    features = create_model("efficientnet_lite0", num_classes=0).eval()
    with torch.inference_mode():
        assert features(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    head = create_model("efficientnet_lite0", num_classes=7)
    assert head.classifier.out_features == 7
    # the body is pretrained even when the head is new
    ref = create_model("efficientnet_lite0", num_classes=1000)
    assert torch.equal(head.blocks[3][0].conv_pw.weight, ref.blocks[3][0].conv_pw.weight)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        get_spec("resnet9000")


def test_preprocessing_is_mean_std_half():
    pp = get_spec("efficientnet_lite0").preprocessing(64)
    x = pp.to_array(Image.new("RGB", (100, 50), (255, 0, 128)))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert np.allclose(x[0], 1.0) and np.allclose(x[1], -1.0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_create_model_loads_exactly_the_local_weights(tmp_path: Path, suffix: str) -> None:
    source = save_timm_weights(tmp_path, suffix)
    model = create_model(TIMM_NAME, 3, weights_dir=tmp_path)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 3
    assert torch.equal(model.body.stem[0].weight, source.stem[0].weight)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():  # num_classes=1000 keeps the file's head: the whole network
        assert torch.allclose(create_model(TIMM_NAME, 1000, weights_dir=tmp_path).eval()(x),
                              source(x), atol=1e-5)
    assert get_spec(TIMM_NAME).mean == tuple(source.pretrained_cfg["mean"])
    rebuilt = create_model(TIMM_NAME, 3, pretrained=False)  # a checkpoint's rebuild needs no file
    assert rebuilt.num_features == model.classifier.in_features


def test_a_missing_weights_file_names_the_paths_tried(tmp_path: Path) -> None:
    tried = re.escape(f"{tmp_path / TIMM_ARCH}.safetensors")
    with pytest.raises(WeightsError, match=f"{tried}.*downloads nothing"):
        create_model(TIMM_NAME, 0, weights_dir=tmp_path)


def test_weights_of_other_shapes_name_the_key(tmp_path: Path) -> None:
    state = save_timm_weights(tmp_path).state_dict()
    state["stem.0.weight"] = torch.zeros(1, 3, 2, 2)
    torch.save(state, tmp_path / f"{TIMM_ARCH}.pth")
    with pytest.raises(WeightsError, match=r"stem\.0\.weight is \(1, 3, 2, 2\)"):
        create_model(TIMM_NAME, 0, weights_dir=tmp_path)
