"""Two CPU processes through Accelerate (gloo) on a streamed parquet dataset (streaming_two_ranks.py): each process
trains on its own part (`split_dataset_by_node`, whole shards), the parts are disjoint and cover the data, and
evaluation on the whole streamed eval split counts each image once. The same stream through Accelerate's own
handling loses half the data, which is why `hfkd.training.streaming.StreamingMixin` prepares each part itself."""

import json
from pathlib import Path

import torch

from ..testing_utils import slow, tiny_resnet
from .launch import launch_two, needs_launcher
from .streaming_data import write_parquet_dataset

SCRIPT = Path(__file__).with_name("streaming_two_ranks.py")


@slow
@needs_launcher
def test_two_processes_train_on_disjoint_parts_of_a_stream(tmp_path):
    data = write_parquet_dataset(tmp_path / "data")  # 4 files of 12 rows: 2 whole files per process
    tiny_resnet(3, wide=True, seed=2).save_pretrained(tmp_path / "teacher")
    student = tiny_resnet(3, seed=1)
    student.save_pretrained(tmp_path / "student")

    launch_two(str(SCRIPT), str(tmp_path / "out"), str(data), str(tmp_path / "teacher"), str(tmp_path / "student"))
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)

    # 3 steps of 8 = one pass over each process's 24 rows: disjoint parts covering all 48.
    trained = [r["trained_rows"] for r in ranks]
    assert all(len(rows) == len(set(rows)) == 24 for rows in trained)
    assert sorted(trained[0] + trained[1]) == list(range(48))
    assert all(r["epoch"] == 1.0 for r in ranks)
    # Accelerate alone: dispatching from the main process reads only the main process's part, and sharding the
    # part again keeps half of each part; either way half the rows are never read.
    for key in ("dispatched_rows", "resharded_rows"):
        assert len(set(ranks[0][key]) | set(ranks[1][key])) == 24, key

    # Evaluation: the 9 eval images once each, on both processes. Without dispatching, Accelerate pads the last batch
    # of the eval stream and nothing drops the padding (hence check_streaming_arguments refuses dispatch_batches
    # false): 12 predictions for 9 images.
    for r in ranks:
        assert r["eval_counts"] == [9, 12]
        assert 0.0 <= r["eval"]["eval_accuracy"] <= 1.0
    # DDP kept the replicas equal, and they trained.
    initial = dict(student.named_parameters())
    changed = False
    for name, value in ranks[0]["parameters"].items():
        assert torch.allclose(torch.tensor(value), torch.tensor(ranks[1]["parameters"][name]))
        changed |= not torch.allclose(torch.tensor(value), initial[name])
    assert changed
