"""Copies of each training image per epoch (hfkd.data.views): DeiT's repeated augmentation against a reference written
from RASampler's code, through Accelerate's batch sharding; each copy's own draws; StreamLined's concatenated epoch;
a resumed run's remaining batches; what is refused; the recipes' epochs."""

import glob
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate.data_loader import BatchSamplerShard
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.commands.arguments import parse_args
from hfkd.data.batch_transform import TransformFn, make_transform_fn, set_image_transform
from hfkd.data.datasets import add_sample_index
from hfkd.data.streaming import check_streaming_arguments
from hfkd.data.transforms import ImageConfig, build_transforms
from hfkd.data.views import VIEW_INDEX, RepeatedViewsSampler, copy_stream, expand_views, views_sampler
from hfkd.utils.errors import UsageError

from .test_recipes import parse_recipe
from .testing_utils import perturbed, synthetic_dataset, tiny_resnet

REPO = Path(__file__).resolve().parents[1]


def rasampler_reference(num_images: int, num_replicas: int, rank: int, epoch: int, repeats: int) -> list[tuple]:
    """facebookresearch/deit samplers.py `RASampler.__iter__` for one rank, written again from its code, each item as
    (image, its occurrence among the image's repeats): permute with a generator seeded by the epoch, repeat each
    image in a row, pad with the head, take every num_replicas-th from rank, keep floor(len // 256 * 256 / R)."""
    num_samples = int(math.ceil(num_images * repeats / num_replicas))
    total_size = num_samples * num_replicas
    num_selected = int(math.floor(num_images // 256 * 256 / num_replicas))
    generator = torch.Generator()
    generator.manual_seed(epoch)
    order = torch.randperm(num_images, generator=generator).tolist()
    repeated = [(image, k) for image in order for k in range(repeats)]
    repeated += repeated[: total_size - len(repeated)]
    assert len(repeated) == total_size
    return repeated[rank:total_size:num_replicas][:num_selected]


def shard_rows(sampler, batch_size: int, world: int, rank: int, drop_last: bool) -> list[int]:
    """The rows process `rank` gets when the Trainer's dataloader batches `sampler` and Accelerate shards the batches
    (`BatchSamplerShard`, split_batches off: batches rank, rank + world, ...)."""
    batches = BatchSampler(sampler, batch_size, drop_last=drop_last)
    return [row for batch in BatchSamplerShard(batches, num_processes=world, process_index=rank) for row in batch]


# ------------------------------------------------------------------------------------------ repeated placement


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("num_images,views,world,batch", [(600, 3, 2, 16), (1000, 3, 3, 8), (777, 2, 4, 5),
                                                          (300, 3, 1, 32)])  # fmt: skip
def test_repeated_placement_gives_each_process_its_rasampler_share(num_images, views, world, batch, drop_last):
    sampler = RepeatedViewsSampler(num_images, views, world, batch, seed=0)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        seen = []
        for rank in range(world):
            rows = shard_rows(sampler, batch, world, rank, drop_last)
            expected = rasampler_reference(num_images, world, rank, epoch, views)
            expected = expected[: len(expected) // batch * batch]  # DeiT's loader drops the last partial batch
            assert [(row % num_images, row // num_images) for row in rows] == expected
            seen += rows
        # Every (image, copy) at most once an epoch: each copy a draw of its own.
        assert len(seen) == len(set(seen)) == len(sampler)
    assert len(sampler) == world * ((num_images // 256 * 256) // world // batch) * batch


def test_repeated_placement_is_seeded_by_seed_plus_epoch():
    sampler = RepeatedViewsSampler(512, 3, 2, 8, seed=5)
    order = sampler.process_rows()
    assert [(r % 512, r // 512) for r in order[1]] == rasampler_reference(512, 2, 1, 5, 3)
    sampler.set_epoch(1)
    assert sampler.process_rows() != order
    assert RepeatedViewsSampler(512, 3, 2, 8, seed=5).process_rows() == order  # nothing else feeds it


def test_repeated_placement_refuses_an_epoch_without_a_batch():
    with pytest.raises(UsageError, match="view_placement concat"):
        RepeatedViewsSampler(255, 3, 1, 4)  # RASampler keeps 255 // 256 * 256 = 0 images
    assert views_sampler("concat", 3, 10, world_size=1, batch_size=4) is None
    assert views_sampler("repeated", 1, 10, world_size=1, batch_size=4) is None


# ------------------------------------------------------------------------------------------ copies and their draws


def image_dataset(count: int, size: int = 16, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=5)})
    return Dataset.from_dict({"image": images, "label": [i % 5 for i in range(count)]}, features=features)


def pixels(dataset, rows) -> list[torch.Tensor]:
    return [dataset[int(row)]["pixel_values"] for row in rows]


def test_each_copy_draws_on_its_own_stream_and_copy_zero_as_a_run_without_copies():
    config = ImageConfig(size=(16, 16))
    weak = build_transforms(config, True, train_augment="crop_flip")
    strong = build_transforms(config, True, train_augment="fixmatch")
    raw = add_sample_index(image_dataset(4))
    fn = make_transform_fn(weak, None, "image", "label", seed=3, copies=[((strong, None), None)])
    expanded = expand_views(set_image_transform(raw, fn), 2)
    assert len(expanded) == 8 and list(expanded.with_format()[VIEW_INDEX]) == [0] * 4 + [1] * 4

    plain = set_image_transform(add_sample_index(image_dataset(4)), make_transform_fn(weak, None, seed=3))
    columns = ("image", "label", False, "sample_index")
    alone = set_image_transform(add_sample_index(image_dataset(4)), TransformFn(strong, None, *columns, seed=3,
                                                                                 stream=copy_stream(1)))  # fmt: skip
    for i in range(4):
        assert torch.equal(expanded[i]["pixel_values"], plain[i]["pixel_values"])  # copy 0: the run's own draws
        assert torch.equal(expanded[4 + i]["pixel_values"], alone[i]["pixel_values"])  # copy 1: its stream, pinned
        assert not torch.equal(expanded[i]["pixel_values"], expanded[4 + i]["pixel_values"])
        assert expanded[4 + i]["sample_index"] == i and expanded[4 + i]["labels"] == i % 5
    # The same rows whatever the batch they are fetched in (any worker, any resume point).
    together = expanded[[5, 1, 6]]["pixel_values"]
    assert all(torch.equal(a, b) for a, b in zip(together, pixels(expanded, [5, 1, 6])))
    # The next epoch draws again, for every copy.
    before = pixels(expanded, range(8))
    fn.set_epoch(1)
    after = pixels(expanded, range(8))
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


def test_copies_default_to_the_runs_pipelines_each_on_its_own_draws():
    weak = build_transforms(ImageConfig(size=(16, 16)), True, train_augment="crop_flip")
    expanded = expand_views(set_image_transform(add_sample_index(image_dataset(3)), make_transform_fn(weak)), 3)
    columns = ("image", "label", False, "sample_index")
    third = set_image_transform(add_sample_index(image_dataset(3)), TransformFn(weak, None, *columns, seed=0,
                                                                                 stream=copy_stream(2)))  # fmt: skip
    views = pixels(expanded, range(9))
    for i in range(3):
        assert torch.equal(views[6 + i], third[i]["pixel_values"])
        assert len({tuple(views[c * 3 + i].flatten().tolist()) for c in range(3)}) == 3


def test_expanding_refuses_what_would_repeat_the_same_pixels():
    with pytest.raises(UsageError, match="same pixels"):
        expand_views(synthetic_dataset(4), 2)  # precomputed tensors
    weak = build_transforms(ImageConfig(size=(16, 16)), True, train_augment="crop_flip")
    with pytest.raises(UsageError, match="add_sample_index"):
        expand_views(set_image_transform(image_dataset(2), make_transform_fn(weak)), 2)
    assert expand_views(synthetic_dataset(4), 1) is not None  # one view: the dataset as it is


# ------------------------------------------------------------------------------------------ arguments


def arguments(tmp_path, **kwargs) -> DistillationArguments:
    return DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def test_arguments_refuse_what_copies_cannot_serve(tmp_path):
    with pytest.raises(UsageError, match="teacher cache"):
        arguments(tmp_path, distill_views_per_image=2, teacher_cache_dir=str(tmp_path))
    with pytest.raises(UsageError, match="bogus"):
        arguments(tmp_path, distill_views_per_image=2, distill_view_augments=["crop_flip", "bogus"])
    with pytest.raises(UsageError, match="each of the"):
        arguments(tmp_path, distill_views_per_image=3, distill_view_augments=["crop_flip", "fixmatch"])
    with pytest.raises(UsageError, match=">= 1"):
        arguments(tmp_path, distill_views_per_image=0)
    args = arguments(tmp_path, distill_views_per_image=2, max_steps=4)
    with pytest.raises(UsageError, match="--views_per_image 2"):
        check_streaming_arguments(args)
    with pytest.raises(UsageError, match="one view"):
        args.check_task("semantic-segmentation")
    # One view turns a recipe's copies off, whatever placement it names.
    assert arguments(tmp_path, distill_view_placement="repeated").distill_views_per_image == 1


def test_the_command_line_spells_the_copies_and_points_deits_flag_at_them(tmp_path, capsys):
    argv = ["--student", "resnet8x4", "--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none"]
    *_, args, _ = parse_args([*argv, "--views_per_image", "2", "--view_augments", "crop_flip", "fixmatch"])
    assert (args.distill_views_per_image, args.distill_view_augments) == (2, ["crop_flip", "fixmatch"])
    assert args.distill_view_placement == "concat"
    with pytest.raises(SystemExit):
        parse_args([*argv, "--repeated-aug"])
    assert "--repeated-aug (did you mean --views_per_image 3 --view_placement repeated?)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the trainer


def test_repeated_copies_resume_to_the_same_remaining_batches(tmp_path):
    """Two epochs of RASampler's order on one process; a run resumed mid-epoch sees the batches (indices, copies and
    pixels) the uninterrupted run saw."""
    config = ImageConfig(size=(8, 8))

    def run(folder, max_steps, resume=None):
        fn = make_transform_fn(build_transforms(config, True, train_augment="crop_flip"), seed=0)
        data = set_image_transform(add_sample_index(image_dataset(256, size=8)), fn)
        args = arguments(folder, per_device_train_batch_size=64, max_steps=max_steps, save_steps=5, seed=0,
                         learning_rate=0.1, optim="sgd", distill_views_per_image=3, distill_view_placement="repeated",
                         disable_tqdm=True)  # fmt: skip
        trainer = DistillationTrainer(model=tiny_resnet(seed=1), teacher_model=perturbed(tiny_resnet(wide=True), 2),
                                      args=args, train_dataset=data)  # fmt: skip
        seen, compute = [], trainer.compute_loss

        def recording(model, inputs, *rest, **kwargs):
            seen.append((inputs["sample_index"].tolist(), inputs["pixel_values"].sum(dim=(1, 2, 3)).tolist()))
            return compute(model, inputs, *rest, **kwargs)

        trainer.compute_loss = recording
        assert len(trainer.get_train_dataloader()) == 4  # 256 // 256 * 256 samples, batches of 64
        trainer.train(resume_from_checkpoint=resume)
        return seen

    straight = run(tmp_path / "a", 7)
    resumed = run(tmp_path / "b", 7, resume=str(tmp_path / "a" / "checkpoint-5"))
    assert len(resumed) == 2 and resumed == straight[5:]  # steps 2 and 3 of epoch 1
    for epoch, steps in ((0, straight[:4]), (1, straight[4:])):
        expected = [image for image, _ in rasampler_reference(256, 1, 0, epoch, 3)]
        assert [i for indices, _ in steps for i in indices] == expected[: 64 * len(steps)]


# ------------------------------------------------------------------------------------------ the recipes


STREAMLINED = sorted(glob.glob(str(REPO / "recipes/cifar100/streamlined/*/*.yaml")))
DEIT = sorted(glob.glob(str(REPO / "recipes/imagenet/deit/*.yaml")))


def test_streamlined_recipes_train_on_the_drivers_concatenated_epoch(tmp_path):
    assert len(STREAMLINED) == 66
    for recipe in STREAMLINED:
        data = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
        assert data["distill_views_per_image"] == 2 and data["distill_view_augments"] == ["crop_flip", "fixmatch"]
        assert "distill_view_placement" not in data and "Not replicated (needs code): the driver" not in str(data)
    _, _, _, args, _ = parse_recipe("recipes/cifar100/streamlined/kd/resnet8x4_from_resnet32x4.yaml", tmp_path)
    assert args.distill_view_placement == "concat"
    # CIFAR-100's 50,000 training images, as rows with an index (nothing is decoded to count batches).
    weak = build_transforms(ImageConfig(size=(32, 32)), True, train_augment=args.distill_view_augments[0])
    cifar = Dataset.from_dict({"sample_index": np.arange(50_000)})
    cifar.set_transform(make_transform_fn(weak))
    expanded = expand_views(cifar, args.distill_views_per_image)
    batch = args.per_device_train_batch_size
    assert views_sampler(args.distill_view_placement, 2, 50_000, world_size=1, batch_size=batch) is None
    loader = DataLoader(expanded, batch_size=batch, sampler=RandomSampler(expanded),
                        drop_last=args.dataloader_drop_last)  # fmt: skip
    assert len(expanded) == 100_000 and len(loader) == math.ceil(2 * 50_000 / 64) == 1563


@pytest.mark.parametrize("recipe", DEIT, ids=lambda p: Path(p).stem)
def test_deit_recipes_repeat_each_image_three_times_in_rasamplers_epoch(recipe, tmp_path):
    _, _, _, args, _ = parse_recipe(str(Path(recipe).relative_to(REPO)), tmp_path)
    assert (args.distill_views_per_image, args.distill_view_placement) == (3, "repeated")
    images, world, batch = 1_281_167, 8, args.per_device_train_batch_size  # ImageNet-1k on the headers' 8 GPUs
    sampler = views_sampler(args.distill_view_placement, args.distill_views_per_image, images, world_size=world,
                            batch_size=batch, seed=args.seed)  # fmt: skip
    rasampler_len = int(math.floor(images // 256 * 256 / world))  # RASampler.__len__ (num_selected_samples)
    assert sampler.per_process == rasampler_len == 160_128
    assert len(sampler) == world * (rasampler_len // batch) * batch and rasampler_len // batch == 1251
