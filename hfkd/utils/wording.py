"""The English of messages: `with_article` puts "a" or "an" before a word as it is spoken."""

from __future__ import annotations

_VOWELS = frozenset("aeiou")
# Words that start with a vowel letter and a consonant sound: "a OneFormer", "a universal", "a user", "a European".
_CONSONANT_SOUNDS = ("one", "uni", "use", "eu")


def with_article(phrase: str) -> str:
    """`phrase` after its indefinite article: "an image-classification", "a semantic-segmentation", "an
    object-detection", "a Mask2FormerForUniversalSegmentation". By its first letters: acronyms read letter by letter
    ("an MLP") are not told apart."""
    start = phrase.lower()
    vowel = start[:1] in _VOWELS and not start.startswith(_CONSONANT_SOUNDS)
    return f"{'an' if vowel else 'a'} {phrase}"
