"""The trainer's side of streamed data (`hfkd.streaming`): each process reads its own part of the stream, pass after
pass, until `max_steps`."""

from __future__ import annotations

from typing import Any

from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from hfkd.data.streaming import RESUME_NEEDS_IGNORE_DATA_SKIP, check_streaming_arguments, stream_mark
from hfkd.utils import upstream
from hfkd.utils.errors import UsageError


class StreamLoader(TrainerCallback):
    """A process's training dataloader, read pass after pass until `max_steps`: the Trainer sees one endless epoch,
    so processes whose parts differ in length never end epochs at different steps (with gradient accumulation that
    would desynchronise them). Each pass reshuffles the stream and advances the transform's draws. As a callback it
    makes `state.epoch` the pass (what DKD's warm-up reads, and what is logged) instead of the share of `max_steps`
    done."""

    def __init__(self, loader: Any, transform: Any) -> None:
        self.loader, self.transform = loader, transform
        self.epoch, self.batches, self.pass_length, self.ended = 0, 0, None, False

    def set_epoch(self, epoch: int) -> None:
        """The Trainer's epoch (always 0 here); the passes are counted in `epoch`."""

    @property
    def progress(self) -> float:
        """Passes read, with the share of the current one once a whole pass has given its length."""
        if self.ended:
            return self.epoch + 1.0
        return self.epoch + (min(self.batches / self.pass_length, 0.999) if self.pass_length else 0.0)

    def __iter__(self) -> Any:
        while True:
            if hasattr(self.transform, "set_epoch"):
                self.transform.set_epoch(self.epoch)  # before the dataloader workers copy it
            self.loader.set_epoch(self.epoch)  # the dataset's shard order and shuffle buffer
            self.batches, self.ended = 0, False
            for batch in self.loader:
                self.batches += 1
                # Accelerate's loader reads one batch ahead, so it knows when it hands out the pass's last one.
                self.ended = bool(getattr(self.loader, "end_of_dataloader", False))
                yield batch
            if self.batches == 0:
                raise UsageError(
                    f"This process's part of the training stream is empty (pass {self.epoch}): it has fewer shards or "
                    "rows than there are processes. Use fewer processes or data in more files."
                )
            self.pass_length, self.epoch = self.batches, self.epoch + 1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.epoch = int(state.epoch or 0)  # a resumed run restarts the pass it was in

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        state.epoch = self.progress

    on_step_end = on_step_begin


class StreamingMixin:
    """The overrides of `DistillationTrainer` for a `train_dataset` from `set_stream_transform` (others take the
    Trainer's path). Each process holds its own part of the stream, so its dataloader is prepared for it alone: by
    default Accelerate would read the main process's part and dispatch slices of its batches, and with
    `dispatch_batches=False` it would shard each part again; either way half the data (with 2 processes) is never
    read (tests/distributed/test_streaming_two_processes.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stream_loader: StreamLoader | None = None
        if stream_mark(self.train_dataset) is not None:
            check_streaming_arguments(self.args)

    def get_train_dataloader(self) -> Any:
        mark = stream_mark(self.train_dataset)
        if mark is None:
            return super().get_train_dataloader()
        args, accelerator = self.args, self.accelerator
        if mark[:2] != (args.process_index, args.world_size):
            raise UsageError(
                f"The training stream is the part of process {mark[0]} of {mark[1]}, and this is process "
                f"{args.process_index} of {args.world_size}: load it with load_streaming_dataset(rank="
                "args.process_index, world_size=args.world_size)."
            )
        options = ("num_workers", "pin_memory", "persistent_workers", "multiprocessing_context", "prefetch_factor")
        loader = DataLoader(
            self.train_dataset,
            batch_size=upstream.train_batch_size(self),
            collate_fn=upstream.collator_without_unused_columns(self, self.data_collator, "Training"),
            drop_last=args.dataloader_drop_last,
            **{option: getattr(args, f"dataloader_{option}") for option in options},
        )
        prepared = prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0,
            put_on_device=accelerator.device_placement, dispatch_batches=False, non_blocking=accelerator.non_blocking,
        )  # fmt: skip
        if self._stream_loader is not None:
            self.remove_callback(self._stream_loader)
        self._stream_loader = StreamLoader(prepared, mark[2])
        self.add_callback(self._stream_loader)
        return self._stream_loader

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        resuming = resume_from_checkpoint not in (None, False) and not self.args.ignore_data_skip
        if resuming and stream_mark(self.train_dataset) is not None:
            raise UsageError(f"--streaming: {RESUME_NEEDS_IGNORE_DATA_SKIP}")
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
