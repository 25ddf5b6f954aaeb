import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import logging  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    pipeline,
)

from hfkd.models.export import make_timm_loadable, save_student
from hfkd.models.loading import (
    MODEL_ALIASES,
    ModelSpec,
    load_image_classifier,
    load_image_processor,
    resolve_model_name,
)

REQUIRED_ALIASES = {
    "resnet-18": "microsoft/resnet-18",
    "resnet-34": "microsoft/resnet-34",
    "resnet-50": "microsoft/resnet-50",
    "resnet-101": "microsoft/resnet-101",
    "resnet-152": "microsoft/resnet-152",
    "mobilenet-v1": "timm/mobilenetv1_100.ra4_e3600_r224_in1k",
    "mobilenet-v2": "google/mobilenet_v2_1.0_224",
    "efficientnet-b0": "google/efficientnet-b0",
    "swin-tiny": "microsoft/swin-tiny-patch4-window7-224",
    "swin-base": "microsoft/swin-base-patch4-window7-224",
    "swin-large": "microsoft/swin-large-patch4-window7-224",
    "vit-base": "google/vit-base-patch16-224",
    "convnext-tiny": "facebook/convnext-tiny-224",
    "microsoft/swin-large": "microsoft/swin-large-patch4-window7-224",
}
TIMM_ARCH = "test_resnet"  # timm's own tiny test model: builds in milliseconds, 160x160 input


def _perturb(model: torch.nn.Module) -> None:
    # Random-init heads are near zero (zero-init BN gammas); noise makes logit comparisons meaningful.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.fixture
def resnet_dir(tmp_path):
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    model = ResNetForImageClassification(config)
    path = tmp_path / "resnet5"
    model.save_pretrained(path)
    return path


@pytest.fixture
def timm_student():
    torch.manual_seed(0)
    id2label = {0: "cat", 1: "dog", 2: "fox", 3: "owl"}
    model = load_image_classifier(TIMM_ARCH, num_labels=4, id2label=id2label, pretrained=False).eval()
    _perturb(model)
    return model


@pytest.mark.parametrize("alias", sorted(a for a, target in MODEL_ALIASES.items() if "/" in target))
def test_every_alias_resolves_to_a_hub_id(alias):
    spec = resolve_model_name(alias)
    assert spec.source.count("/") == 1 and spec.source == MODEL_ALIASES[alias]
    assert spec.kind == ("timm_hub" if spec.source.startswith("timm/") else "hub")
    assert spec.is_timm == spec.source.startswith("timm/")
    # an alias target is a real id, never another alias
    assert spec.source not in MODEL_ALIASES


@pytest.mark.parametrize("alias", ["resnet8x4", "resnet32x4", "wrn_40_2", "mobile_half", "shufflev1"])
def test_cifar_aliases_resolve_to_the_timm_zoo(alias):
    spec = resolve_model_name(alias)
    assert spec.kind == "timm_arch" and spec.is_timm and spec.source.startswith("cifar_")
    assert timm.is_model(spec.source)


def test_random_init_timm_student_keeps_timms_initialisation():
    model = load_image_classifier("resnet8x4", num_labels=100, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == 1_233_540
    stem = model.timm_model.conv1.weight
    # kaiming-normal fan-out of mdistiller (std ≈ sqrt(2 / (32·9)) ≈ 0.083), not transformers' generic 0.02
    assert 0.06 < stem.std().item() < 0.11


def test_required_aliases():
    for alias, target in REQUIRED_ALIASES.items():
        assert MODEL_ALIASES[alias] == target
        assert resolve_model_name(alias).source == target
    assert resolve_model_name("ResNet-50", revision="main") == ModelSpec(
        "ResNet-50", "microsoft/resnet-50", "hub", "main", False
    )


def test_timm_aliases_exist_in_timm():
    for target in MODEL_ALIASES.values():
        if target.startswith("timm/"):
            assert timm.is_model(target.removeprefix("timm/")), target


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv1_100", "resnet18.a1_in1k", TIMM_ARCH])
def test_timm_arch(name):
    assert resolve_model_name(name) == ModelSpec(name, name, "timm_arch", None, True)


def test_hub_ids():
    assert resolve_model_name("timm/resnet18.a1_in1k").kind == "timm_hub"
    assert resolve_model_name("timm/resnet18.a1_in1k").is_timm
    assert resolve_model_name("microsoft/resnet-50") == ModelSpec(
        "microsoft/resnet-50", "microsoft/resnet-50", "hub", None, False
    )


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"'resnet-5O'.*'resnet-50'"):
        resolve_model_name("resnet-5O")
    with pytest.raises(ValueError, match="'not_a_model'") as excinfo:
        resolve_model_name("not_a_model")
    assert "timm architecture name" in str(excinfo.value)
    with pytest.raises(ValueError, match="no local folder"):
        resolve_model_name("./does/not/exist")


def test_local_folder(resnet_dir, tmp_path):
    spec = resolve_model_name(str(resnet_dir))
    assert spec == ModelSpec(str(resnet_dir), str(resnet_dir.resolve()), "local", None, False)
    model = load_image_classifier(spec)
    assert isinstance(model, ResNetForImageClassification) and model.config.num_labels == 5

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model_name(str(empty))


def test_student_head_replacement(resnet_dir, caplog):
    saved = load_file(resnet_dir / "model.safetensors")
    id2label = {0: "a", 1: "b", 2: "c"}
    with caplog.at_level(logging.WARNING, logger="hfkd.models.loading"):
        model = load_image_classifier(str(resnet_dir), num_labels=3, id2label=id2label)
    assert model.classifier[-1].out_features == 3
    assert model.config.id2label == id2label and model.config.label2id == {"a": 0, "b": 1, "c": 2}
    assert any("5 -> 3" in record.getMessage() for record in caplog.records)
    embedder = "resnet.embedder.embedder.convolution.weight"
    torch.testing.assert_close(model.state_dict()[embedder], saved[embedder])

    # same size: names are set, no head replaced
    caplog.clear()
    names = {i: f"class_{i}" for i in range(5)}
    with caplog.at_level(logging.WARNING, logger="hfkd.models.loading"):
        model = load_image_classifier(str(resnet_dir), num_labels=5, id2label=names)
    assert model.config.id2label == names and not caplog.records
    torch.testing.assert_close(model.state_dict()["classifier.1.weight"], saved["classifier.1.weight"])

    # same size, no names: the checkpoint's names stay
    named = load_image_classifier(str(resnet_dir), num_labels=5, id2label=names)
    named.save_pretrained(resnet_dir.parent / "named")
    assert load_image_classifier(str(resnet_dir.parent / "named"), num_labels=5).config.id2label == names

    # random init from the folder's config
    assert load_image_classifier(str(resnet_dir), num_labels=3, pretrained=False).config.num_labels == 3


def test_teacher_head_untouched_and_mismatch_rejected(resnet_dir, caplog):
    from hfkd.models.label_space import check_teacher_labels

    teacher = load_image_classifier(str(resnet_dir))  # no label space given: the checkpoint's head is kept
    assert teacher.config.num_labels == 5
    with pytest.raises(ValueError, match="--loss ce"):
        check_teacher_labels(teacher, num_labels=3)
    check_teacher_labels(teacher, num_labels=5)
    with caplog.at_level(logging.WARNING, logger="hfkd.models.label_space"):
        check_teacher_labels(teacher, num_labels=5, id2label={i: f"dataset_{i}" for i in range(5)})
    assert any("class names differ" in record.getMessage() for record in caplog.records)


def test_timm_student_loads_in_transformers_timm_and_pipeline(timm_student, tmp_path):
    path = str(tmp_path / "student")
    save_student(timm_student, path, image_processor=load_image_processor(TIMM_ARCH))
    assert resolve_model_name(path).is_timm
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["model_args"] == {} and config["num_classes"] == 4 and config["pretrained_cfg"]["num_classes"] == 4
    assert not any(key.startswith("timm_model.") for key in load_file(f"{path}/model.safetensors"))

    pixel_values = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    hf_model = AutoModelForImageClassification.from_pretrained(path).eval()
    timm_model = timm.create_model("local-dir:" + path, pretrained=True).eval()
    assert isinstance(hf_model, TimmWrapperForImageClassification)
    # class names survive a reload as a student of the same size (TimmWrapperConfig drops them given num_labels)
    assert load_image_classifier(path, num_labels=4).config.id2label == timm_student.config.id2label
    with torch.no_grad():
        expected = timm_student(pixel_values).logits
        torch.testing.assert_close(hf_model(pixel_values).logits, expected)
        torch.testing.assert_close(timm_model(pixel_values), expected)
    assert expected.abs().max() > 1e-3

    classifier = pipeline("image-classification", model=path)
    predictions = classifier(Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)))
    assert {p["label"] for p in predictions} == {"cat", "dog", "fox", "owl"}

    # a student reloaded by transformers and saved again stays loadable by both (idempotent)
    resaved = str(tmp_path / "resaved")
    save_student(hf_model, resaved)
    with torch.no_grad():
        torch.testing.assert_close(
            timm.create_model("local-dir:" + resaved, pretrained=True).eval()(pixel_values), expected
        )


def test_make_timm_loadable_fixes_plain_save_pretrained(timm_student, tmp_path):
    path = str(tmp_path / "plain")
    timm_student.save_pretrained(path, max_shard_size="50KB")  # sharded: merged back into one file
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["model_args"] is None
    # the trap: timm reads `model_args: null` from transformers' export and calls `.get` on it
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'get'"):
        timm.create_model("local-dir:" + path, pretrained=True)
    make_timm_loadable(path)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["config.json", "model.safetensors"]
    pixel_values = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        expected = timm_student(pixel_values).logits
        torch.testing.assert_close(
            timm.create_model("local-dir:" + path, pretrained=True).eval()(pixel_values), expected
        )
        torch.testing.assert_close(
            AutoModelForImageClassification.from_pretrained(path)(pixel_values).logits, expected
        )


def test_make_timm_loadable_without_pretrained_cfg(tmp_path):
    # A TimmWrapperConfig built by hand has no pretrained_cfg: timm then parses the whole config.json as one.
    model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture=TIMM_ARCH, num_labels=3)).eval()
    path = str(tmp_path / "bare")
    model.save_pretrained(path)
    with pytest.raises(TypeError, match="architectures"):
        timm.create_model("local-dir:" + path, pretrained=True)
    make_timm_loadable(path)
    pretrained_cfg = json.loads((tmp_path / "bare" / "config.json").read_text())["pretrained_cfg"]
    assert pretrained_cfg["input_size"] == [3, 160, 160] and "hf_hub_id" not in pretrained_cfg
    pixel_values = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(
            timm.create_model("local-dir:" + path, pretrained=True).eval()(pixel_values), model(pixel_values).logits
        )
    assert len(pipeline("image-classification", model=path)(Image.new("RGB", (40, 30)))) == 3


def test_make_timm_loadable_rejects_non_timm(resnet_dir, tmp_path):
    with pytest.raises(ValueError, match="not a timm one"):
        make_timm_loadable(str(resnet_dir))
    with pytest.raises(ValueError, match="No config.json"):
        make_timm_loadable(str(tmp_path))
