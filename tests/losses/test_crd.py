import math

import pytest
import torch
import torch.nn.functional as F

from hfkd.losses import DistillBatch, LossContext, crd_loss, crd_nce_loss, create_loss
from hfkd.losses._feature_maps import pooled_features
from hfkd.losses.crd import contrast_scores
from hfkd.models.features import probe_feature_shapes

from ..testing_utils import collate, slow, synthetic_dataset, tiny_resnet
from .trainable_reference import crd as reference_crd
from .trainable_reference import crd_nce as reference_nce

DATASET_SIZE = 40


def _tiny_pair(batch=4):
    student, teacher = tiny_resnet(seed=1), tiny_resnet(wide=True, seed=2)
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    context = LossContext(
        dataset_size=DATASET_SIZE,
        student_feature_shapes=probe_feature_shapes(student, pixels),
        teacher_feature_shapes=probe_feature_shapes(teacher, pixels),
    )
    outputs = [m(pixel_values=pixels, output_hidden_states=True) for m in (student, teacher)]
    return student, teacher, context, *outputs


def _embeddings(b, k, d, seed):
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)

    return unit(b, d), unit(b, d), unit(b, k + 1, d), unit(b, k + 1, d)


def test_nce_matches_paper_equation():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 9, generator=g, dtype=torch.float64) * 0.5
    expected = reference_nce(scores.numpy(), 30)
    assert crd_nce_loss(scores, 30).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("b,k,d,temperature", [(3, 7, 4, 0.07), (2, 15, 8, 0.5), (4, 3, 2, 1.0)])
def test_matches_paper_equation(b, k, d, temperature):
    inputs = _embeddings(b, k, d, seed=b + k + d)
    normalizers, size = (3.5e3, 2.0e2), 50
    expected = reference_crd(*(x.numpy() for x in inputs), temperature, normalizers, size)
    got = crd_loss(*inputs, normalizers=normalizers, dataset_size=size, temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    floats = [x.float() for x in inputs]
    as_float = crd_loss(*floats, normalizers=normalizers, dataset_size=size, temperature=temperature)
    assert as_float.item() == pytest.approx(expected, rel=1e-4)


def test_pinned_value_from_reference_code():
    inputs = _embeddings(4, 16, 8, seed=14)
    value = crd_loss(*inputs, normalizers=(1e3, 2e3), dataset_size=100, temperature=0.07).item()
    assert value == pytest.approx(28.136398578793155, rel=1e-12)


def test_gradient_matches_finite_differences():
    student, teacher, student_rows, teacher_rows = _embeddings(2, 3, 3, seed=2)
    student, teacher = student.requires_grad_(), teacher.requires_grad_()

    def loss(s, t):
        return crd_loss(s, t, student_rows, teacher_rows, normalizers=(20.0, 30.0), dataset_size=10, temperature=0.5)

    assert torch.autograd.gradcheck(loss, (student, teacher))


def test_memory_banks_update_with_momentum_and_z_is_fixed_by_the_first_batch():
    _, _, context, student_out, teacher_out = _tiny_pair()
    loss = create_loss("crd", nce_k=8, momentum=0.25, context=context)
    assert loss.memory.student.shape == loss.memory.teacher.shape == (DATASET_SIZE, 128)
    assert loss.memory.normalizer.tolist() == [-1.0, -1.0]
    before = {name: getattr(loss.memory, name).clone() for name in ("student", "teacher")}
    index = torch.tensor([3, 7, 11, 0])
    torch.manual_seed(5)
    out = loss(student_out, teacher_out, DistillBatch(sample_index=index))
    # Z = mean raw score × N, from that very batch (recomputed here with the same negatives).
    torch.manual_seed(5)
    contrast_index = loss.memory.sample(index, 8)
    with torch.no_grad():
        v_s = loss.embed_student(pooled_features(student_out))
        v_t = loss.embed_teacher(pooled_features(teacher_out))
        raw_s = contrast_scores(v_s, before["teacher"][contrast_index])
        raw_t = contrast_scores(v_t, before["student"][contrast_index])
    z = torch.stack([raw_s.mean(), raw_t.mean()]) * DATASET_SIZE
    torch.testing.assert_close(loss.memory.normalizer, z)
    expected = crd_loss(
        v_s, v_t, before["student"][contrast_index], before["teacher"][contrast_index],
        normalizers=tuple(z.tolist()), dataset_size=DATASET_SIZE, temperature=0.07,
    )  # fmt: skip
    assert out["crd"].item() == pytest.approx(expected.item(), rel=1e-5)
    for name, embed in (("student", v_s), ("teacher", v_t)):
        bank = getattr(loss.memory, name)
        mixed = F.normalize(0.25 * before[name][index] + 0.75 * embed, dim=1)
        torch.testing.assert_close(bank[index], mixed)
        torch.testing.assert_close(bank[index].norm(dim=1), torch.ones(4))
        untouched = torch.ones(DATASET_SIZE, dtype=torch.bool).index_fill(0, index, False)
        assert torch.equal(bank[untouched], before[name][untouched])
    loss(student_out, teacher_out, DistillBatch(sample_index=torch.tensor([1, 2, 3, 4])))
    torch.testing.assert_close(loss.memory.normalizer, z)
    # Evaluation mode leaves the banks alone.
    frozen = loss.memory.student.clone()
    loss.eval()(student_out, teacher_out, DistillBatch(sample_index=torch.tensor([5, 6, 8, 9])))
    assert torch.equal(loss.memory.student, frozen)


def test_negatives_are_other_samples_of_the_dataset():
    _, _, context, _, _ = _tiny_pair()
    memory = create_loss("crd", nce_k=8, context=context).memory
    index = torch.arange(DATASET_SIZE)
    drawn = memory.sample(index, 500)
    assert drawn.shape == (DATASET_SIZE, 501) and torch.equal(drawn[:, 0], index)
    negatives = drawn[:, 1:]
    assert (negatives != index[:, None]).all() and negatives.min() >= 0 and negatives.max() < DATASET_SIZE
    assert len(negatives.unique()) == DATASET_SIZE


def test_state_dict_round_trip_restores_banks_and_z_exactly():
    _, _, context, student_out, teacher_out = _tiny_pair()
    trained = create_loss("crd", nce_k=8, context=context)
    trained(student_out, teacher_out, DistillBatch(sample_index=torch.tensor([0, 1, 2, 3])))
    fresh = create_loss("crd", nce_k=8, context=context)
    assert not torch.equal(fresh.memory.student, trained.memory.student)
    fresh.load_state_dict(trained.state_dict())
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert {"memory.student", "memory.teacher", "memory.normalizer"} <= set(trained.state_dict())


def test_module_trains_student_and_both_embeddings_only():
    student, teacher, context, student_out, teacher_out = _tiny_pair()
    loss = create_loss("crd", nce_k=8, context=context)
    assert loss.embed_student.linear.in_features == 16 and loss.embed_teacher.linear.in_features == 32
    out = loss(student_out, teacher_out, DistillBatch(sample_index=torch.arange(4)))
    assert set(out) == {"loss", "crd", "crd_student", "crd_teacher"}
    assert out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    assert out["loss"].item() == pytest.approx(0.8 * (out["crd_student"] + out["crd_teacher"]).item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in loss.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_hyperparameters_change_the_value_and_bad_settings_raise():
    _, _, context, student_out, teacher_out = _tiny_pair()
    values = []
    for temperature in (0.07, 0.2):
        torch.manual_seed(0)
        loss = create_loss("crd", nce_k=8, temperature=temperature, context=context)
        values.append(loss(student_out, teacher_out, DistillBatch(sample_index=torch.arange(4)))["crd"].item())
    assert not math.isclose(*values)
    with pytest.raises(ValueError, match=f"nce_k=40 must be smaller than the dataset.*use nce_k={DATASET_SIZE - 1}"):
        create_loss("crd", nce_k=DATASET_SIZE, context=context)
    with pytest.raises(ValueError, match="dataset_size"):
        create_loss("crd", context=LossContext(student_feature_shapes=[(4, 1, 1)], teacher_feature_shapes=[(4, 1, 1)]))
    with pytest.raises(ValueError, match="needs feature shapes"):
        create_loss("crd", context=LossContext(dataset_size=100))
    with pytest.raises(ValueError, match="sample_index"):
        create_loss("crd", nce_k=8, context=context)(student_out, teacher_out, DistillBatch())
    with pytest.raises(ValueError, match="momentum"):
        create_loss("crd", nce_k=8, momentum=1.0, context=context)


def test_trains_end_to_end_with_the_trainer(tmp_path):
    from safetensors.torch import load_file

    from hfkd import DistillationArguments, DistillationTrainer
    from hfkd.training.student_module import ADAPTERS_NAME

    dataset = synthetic_dataset(16)
    dataset = dataset.add_column("sample_index", list(range(16))).with_format("torch")

    def collate_with_index(examples):
        return {**collate(examples), "sample_index": torch.tensor([int(e["sample_index"]) for e in examples])}

    args = DistillationArguments(
        output_dir=str(tmp_path),
        distill_loss="crd",
        distill_loss_kwargs={"nce_k": 8},
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    student = tiny_resnet(seed=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_resnet(wide=True, seed=2),
        args=args,
        train_dataset=dataset,
        data_collator=collate_with_index,
    )
    memory = trainer.model.distill_loss.memory
    before = memory.student.clone()
    trainer.train()
    changed = (memory.student != before).any(dim=1)
    assert changed.sum() == 8 and (memory.normalizer > 0).all()
    assert any("distill/crd_student" in entry for entry in trainer.state.log_history)
    trainer.save_model()
    saved = load_file(tmp_path / ADAPTERS_NAME)
    assert torch.equal(saved["memory.student"], memory.student)
    assert torch.equal(saved["memory.normalizer"], memory.normalizer)


def _ddp_worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    from hfkd.losses._adapters import ContrastMemory

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        memory = ContrastMemory(4, 10, momentum=0.5)
        # Uneven batches (2 and 3 samples), as the last batch of an epoch can be.
        index = torch.tensor([[0, 5], [1, 6, 9]][rank])
        embed = F.normalize(torch.randn(len(index), 4, generator=torch.Generator().manual_seed(rank + 1)), dim=1)
        memory.update(index, embed, -embed)
        normalizer = memory.normalizers(torch.full((3,), rank + 1.0), torch.full((3,), 2.0 * (rank + 1)))
        torch.save({"state": memory.state_dict(), "normalizer": normalizer}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@slow
def test_memory_updates_and_z_are_shared_across_processes(tmp_path):
    import torch.multiprocessing as mp

    from hfkd.losses._adapters import ContrastMemory

    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key, value in results[0]["state"].items():
        assert torch.equal(results[1]["state"][key], value), key
    torch.manual_seed(0)
    initial = ContrastMemory(4, 10, momentum=0.5)
    bank = results[0]["state"]["student"]
    for rank, index in enumerate(([0, 5], [1, 6, 9])):
        embed = F.normalize(torch.randn(len(index), 4, generator=torch.Generator().manual_seed(rank + 1)), dim=1)
        torch.testing.assert_close(bank[index], F.normalize(0.5 * initial.student[index] + 0.5 * embed, dim=1))
    assert torch.equal(bank[[2, 3, 4, 7, 8]], initial.student[[2, 3, 4, 7, 8]])
    # Z: the mean of the processes' first-batch estimates (1.5 and 3.0 mean scores, times N = 10).
    torch.testing.assert_close(results[0]["normalizer"], torch.tensor([15.0, 30.0]))


def test_memory_banks_are_not_rebroadcast_by_ddp():
    from hfkd.training.student_module import DistillationModule

    student, _, context, *_ = _tiny_pair()
    wrapper = DistillationModule(student, create_loss("crd", context=context, nce_k=8))
    ignored = wrapper._ddp_params_and_buffers_to_ignore
    buffers = dict(wrapper.named_buffers())
    assert ignored and all(name in buffers for name in ignored)
    assert {"distill_loss.memory.student", "distill_loss.memory.teacher"} <= set(ignored)
