"""The pretrained weights are really loaded, for every registered backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from graft.backbones import BACKBONES, create_model, get_spec


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
