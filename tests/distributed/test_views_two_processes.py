"""Two CPU processes through Accelerate (gloo) with DeiT's repeated augmentation (views_two_ranks.py): Accelerate's
batch sharding of hfkd's global order hands each process exactly what RASampler gives that rank, epoch by epoch; the
steps train on it, and a run resumed in the middle of epoch 1 trains on that epoch's next batch."""

import json
from pathlib import Path

from ..test_views import rasampler_reference
from ..testing_utils import slow
from .launch import launch_two, needs_launcher
from .views_two_ranks import BATCH, IMAGES

SCRIPT = Path(__file__).with_name("views_two_ranks.py")


@slow
@needs_launcher
def test_two_processes_get_rasamplers_shares_of_the_copies(tmp_path):
    launch_two(str(SCRIPT), str(tmp_path / "out"))
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    per_process = (IMAGES // 256 * 256) // 2  # RASampler's num_selected_samples: 256
    for rank, report in enumerate(ranks):
        assert report["batches"] == per_process // BATCH == 8
        for epoch in (0, 1):
            rows = report["rows"][str(epoch)]
            expected = rasampler_reference(IMAGES, 2, rank, epoch, 3)
            assert [(row % IMAGES, row // IMAGES) for row in rows] == expected
        # The 9 steps trained on this rank's 8 batches of epoch 0 and the first of epoch 1 (the rows, as images)...
        images = {epoch: [row % IMAGES for row in report["rows"][str(epoch)]] for epoch in (0, 1)}
        assert [i for step in report["trained"] for i in step] == images[0] + images[1][:BATCH]
        # ... and the resumed run on the second of epoch 1, as the uninterrupted run would have.
        assert report["resumed"] == [images[1][BATCH : 2 * BATCH]]
    # The copies of an image sit on consecutive ranks: never the same copy twice in an epoch.
    both = ranks[0]["rows"]["0"] + ranks[1]["rows"]["0"]
    assert len(set(both)) == len(both) == 2 * per_process
