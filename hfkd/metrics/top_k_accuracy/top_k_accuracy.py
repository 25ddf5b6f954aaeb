"""Top-1 and top-k accuracy from ranked class predictions; shipped with hfkd so that it loads offline."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-1 and top-k accuracy. `predictions` holds, for each sample, class indices ranked by score (for example
`logits.topk(5).indices`); `references` holds the true class index. Top-1 accuracy counts the first entry,
top-k accuracy counts a hit among the first k entries.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): class indices ranked by decreasing score, one list per sample.
    references (`list` of `int`): true class indices.
    k (`int`, *optional*, defaults to 5): how many ranked entries count for top-k accuracy.
Returns:
    accuracy (`float`): top-1 accuracy in [0, 1].
    top5_accuracy (`float`): top-k accuracy in [0, 1] (the key always reads top{k}_accuracy).
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, k=5):
        ranked = np.asarray(predictions, dtype=np.int64)
        if ranked.ndim == 1:
            ranked = ranked[:, None]
        refs = np.asarray(references, dtype=np.int64)
        if len(refs) == 0:
            return {"accuracy": 0.0, f"top{k}_accuracy": 0.0}
        top1 = float(np.mean(ranked[:, 0] == refs))
        topk = float(np.mean((ranked[:, :k] == refs[:, None]).any(axis=1)))
        return {"accuracy": top1, f"top{k}_accuracy": topk}
