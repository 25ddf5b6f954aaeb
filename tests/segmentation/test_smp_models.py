"""The reference networks through segmentation-models-pytorch: output stride 8, the FCN auxiliary head and the
references' loss, and a saved student that transformers' Auto classes and pipeline load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from transformers import AutoModelForSemanticSegmentation, SegformerImageProcessor, pipeline

from hfkd.models.smp import REFERENCE_NETWORKS, SmpSegmentationConfig, reference_network
from hfkd.utils.errors import UsageError


@pytest.mark.parametrize("name", ["deeplabv3-resnet18", "pspnet-resnet18"])
def test_output_stride_8_and_the_references_loss(name):
    torch.manual_seed(0)
    model = reference_network(name, num_labels=5, pretrained=False).eval()
    pixels = torch.randn(2, 3, 64, 96)
    labels = torch.randint(0, 5, (2, 64, 96))
    labels[0, :10] = 255
    out = model(pixels, labels=labels)
    assert out.logits.shape == out.auxiliary_logits.shape == (2, 5, 8, 12)

    def ce(logits):
        up = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
        keep = labels != 255
        return -up.log_softmax(1).gather(1, labels.clamp(max=4)[:, None])[:, 0][keep].mean()

    expected = ce(out.logits) + 0.4 * ce(out.auxiliary_logits)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    # the dilated stages keep 1/8 of the input: the references' contracted dilation, not a truncated encoder
    layer4 = model.smp_model.encoder.model.layer4
    assert layer4[0].conv1.dilation == (2, 2) and layer4[1].conv1.dilation == (4, 4)


def test_saved_student_loads_with_auto_classes_and_pipeline(tmp_path):
    torch.manual_seed(0)
    model = reference_network("deeplabv3-resnet18", num_labels=3, id2label={0: "bg", 1: "a", 2: "b"}, pretrained=False)
    model.eval().save_pretrained(tmp_path)
    SegformerImageProcessor(size={"height": 64, "width": 64}, do_reduce_labels=False).save_pretrained(tmp_path)
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits, rtol=1e-5, atol=1e-6)
    segments = pipeline("image-segmentation", model=str(tmp_path))(PILImage.fromarray(np.zeros((40, 50, 3), np.uint8)))
    assert {s["label"] for s in segments} <= {"bg", "a", "b"} and segments[0]["mask"].size == (50, 40)


def test_unknown_networks_are_named():
    with pytest.raises(UsageError, match="deeplabv3-resnet18"):
        reference_network("deeplabv3-resnet19", num_labels=3, pretrained=False)
    assert set(REFERENCE_NETWORKS) >= {"deeplabv3-resnet18", "deeplabv3-resnet101", "pspnet-resnet18"}
    assert SmpSegmentationConfig().auxiliary_loss_weight == 0.4
