"""tools/diagnose_embeddings.py: attribute swaps in transcripts and the text-swap cosines."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tvts.data.synthetic import COLOURS, SHAPES, SyntheticConfig, SyntheticCorpus
from tvts.data.tokenizer import get_tokenizer

spec = importlib.util.spec_from_file_location("diagnose_embeddings",
                                              Path(__file__).parents[1] / "tools" / "diagnose_embeddings.py")
diag = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diag)


def test_swap_replaces_exactly_the_events_attribute_word():
    corpus = SyntheticCorpus(SyntheticConfig(), "test")
    rng = np.random.default_rng(0)
    for i in range(30):
        video = corpus.video(i)
        for event, transcript in zip(video.events, video.transcripts):
            for attribute, value in zip(("shape", "colour", "motion"), event.names):
                swapped = diag.swap_attribute(transcript, attribute, rng)
                diff = [(a, b) for a, b in zip(transcript.split(), swapped.split()) if a != b]
                assert len(swapped.split()) == len(transcript.split()) and len(diff) == 1
                old, new = diff[0]
                assert old == value and new in diag.ATTRIBUTE_WORDS[attribute] and new != value


def test_swap_needs_exactly_one_attribute_word():
    with pytest.raises(ValueError, match="names 0 shape words"):
        diag.swap_attribute("the red thing moves left", "shape", np.random.default_rng(0))
    with pytest.raises(ValueError, match="names 2 colour words"):
        diag.swap_attribute("the red blue circle moves left", "colour", np.random.default_rng(0))


def test_majority_rate():
    assert diag.majority_rate(np.array([0, 1, 1, 1])) == 75.0
    assert diag.majority_rate(np.array([2, 0, 2, 1, 2])) == 60.0


class ColourOnlyText:
    """A text 'tower' that embeds only the colour tokens of a text (a fixed random vector per colour)."""

    def __init__(self, tokenizer):
        self.ids = np.array([int(tokenizer([c], 8)[0, 1]) for c in COLOURS])
        self.vectors = np.random.default_rng(0).normal(size=(len(COLOURS), 16))

    def text_embedding(self, params, tokens):
        counts = (tokens[:, :, None] == self.ids).sum(1)   # [B, colours]
        return counts @ self.vectors + 1e-3  # + a constant so no embedding is zero


def test_text_swap_cosines_see_what_the_text_tower_ignores():
    tokenizer = get_tokenizer(32)
    transcripts = [f"now the {c} {s} moves to the left" for c in COLOURS for s in SHAPES]
    cos = diag.text_swap_cosines(ColourOnlyText(tokenizer), None, tokenizer, 32, transcripts)
    np.testing.assert_allclose(cos["text_cosine_after_shape_swap"], 1.0, atol=1e-9)
    np.testing.assert_allclose(cos["text_cosine_after_motion_swap"], 1.0, atol=1e-9)
    assert cos["text_cosine_after_colour_swap"] < 0.5
