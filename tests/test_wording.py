"""Messages use the article their words are spoken with: "an image-classification model", "a semantic-segmentation
model", "an object-detection model"."""

from types import SimpleNamespace

import pytest
from transformers import ResNetConfig, ResNetForImageClassification

from hfkd.tasks.registry import resolve_task
from hfkd.utils.errors import UsageError
from hfkd.utils.wording import with_article


@pytest.mark.parametrize(
    "phrase, expected",
    [
        ("image-classification", "an image-classification"),
        ("semantic-segmentation", "a semantic-segmentation"),
        ("object-detection", "an object-detection"),
        ("Mask2FormerForUniversalSegmentation", "a Mask2FormerForUniversalSegmentation"),
        ("OneFormerForUniversalSegmentation", "a OneFormerForUniversalSegmentation"),
        ("universal model", "a universal model"),
        ("ensemble", "an ensemble"),
        ("", "a "),
    ],
)
def test_with_article_picks_a_or_an_by_sound(phrase, expected):
    assert with_article(phrase) == expected


def test_a_student_of_another_task_is_named_with_its_article():
    student = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    args = SimpleNamespace(distill_task="object-detection")
    with pytest.raises(UsageError, match="is an image-classification model: pass an object-detection student"):
        resolve_task(args, student)
