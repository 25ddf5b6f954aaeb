"""Run by tests/distributed/test_views_two_processes.py under `accelerate launch` (2 CPU processes, gloo): a run with
3 repeated copies of each of 600 images (DeiT's repeated augmentation). Each rank writes the rows its prepared
training dataloader hands it in epochs 0 and 1, the sample indices of the 9 steps it trained on (8 of epoch 0, 1 of
epoch 1, then a checkpoint), and those of the step a run resumed from that checkpoint trained on.
Usage: views_two_ranks.py OUTPUT_DIR."""

import json
import os
import sys

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import ResNetConfig, ResNetForImageClassification

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.data.batch_transform import make_transform_fn, set_image_transform
from hfkd.data.datasets import add_sample_index
from hfkd.data.transforms import ImageConfig, build_transforms

IMAGES, BATCH = 600, 32


def resnet(hidden: list[int]) -> ResNetForImageClassification:
    config = ResNetConfig(embedding_size=8, hidden_sizes=hidden, depths=[1, 1], num_labels=5)
    return ResNetForImageClassification(config)


def trainer_for(output_dir: str, max_steps: int) -> DistillationTrainer:
    args = DistillationArguments(
        output_dir=output_dir, report_to="none", use_cpu=True, per_device_train_batch_size=BATCH, max_steps=max_steps,
        optim="sgd", learning_rate=0.1, save_steps=9, disable_tqdm=True, seed=0, distill_views_per_image=3,
        distill_view_placement="repeated",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(IMAGES)]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=5)})
    data = Dataset.from_dict({"image": images, "label": [i % 5 for i in range(IMAGES)]}, features=features)
    fn = make_transform_fn(build_transforms(ImageConfig(size=(8, 8)), True, train_augment="crop_flip"), seed=0)
    data = set_image_transform(add_sample_index(data), fn)
    trainer = DistillationTrainer(model=resnet([8, 16]), teacher_model=resnet([16, 32]), args=args, train_dataset=data)
    trainer.seen, compute = [], trainer.compute_loss

    def recording(model, inputs, *rest, **kwargs):
        trainer.seen.append(inputs["sample_index"].tolist())
        return compute(model, inputs, *rest, **kwargs)

    trainer.compute_loss = recording
    return trainer


def main() -> None:
    output_dir = sys.argv[1]
    trainer = trainer_for(output_dir, 9)
    args = trainer.args
    loader = trainer.get_train_dataloader()
    rows = {}
    for epoch in (1, 0):
        loader.set_epoch(epoch)
        rows[epoch] = [row for batch in loader.batch_sampler for row in batch]
    trainer.train()
    resumed = trainer_for(os.path.join(output_dir, "resumed"), 10)
    resumed.train(resume_from_checkpoint=os.path.join(output_dir, "checkpoint-9"))
    report = {"rank": args.process_index, "world_size": args.world_size, "rows": rows, "trained": trainer.seen,
              "resumed": resumed.seen, "batches": len(loader)}  # fmt: skip
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"rank{args.process_index}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
