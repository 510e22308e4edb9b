"""tools.research.diagnose_embeddings: attribute swaps in transcripts and the text-swap cosines."""
import numpy as np
import pytest
from helpers import tiny_config

from tools.research import diagnose_embeddings as diag
from tvts.data.synthetic import COLOURS, SHAPES, SyntheticConfig, SyntheticCorpus
from tvts.data.tokenizer import get_tokenizer


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

    def encode_text(self, tokens):
        counts = (tokens[:, :, None] == self.ids).sum(1)   # [B, colours]
        return counts @ self.vectors + 1e-3  # + a constant so no embedding is zero


def test_text_swap_cosines_see_what_the_text_tower_ignores():
    tokenizer = get_tokenizer(32)
    transcripts = [f"now the {c} {s} moves to the left" for c in COLOURS for s in SHAPES]
    cos = diag.text_swap_cosines(ColourOnlyText(tokenizer), tokenizer, 32, transcripts)
    np.testing.assert_allclose(cos["text_cosine_after_shape_swap"], 1.0, atol=1e-9)
    np.testing.assert_allclose(cos["text_cosine_after_motion_swap"], 1.0, atol=1e-9)
    assert cos["text_cosine_after_colour_swap"] < 0.5


@pytest.mark.slow
def test_diagnose_the_random_init_of_a_tiny_model(tmp_path):
    out = diag.diagnose(tiny_config(), str(tmp_path), init=True, num_videos=16, num_probe_train=32, batch=16)
    assert set(out) == ({f"text_cosine_after_{a}_swap" for a in diag.ATTRIBUTE_WORDS}
                        | {f"{p}{label}" for p in ("probe_", "probe_pooled_", "base_") for label in diag.PROBE_LABELS})
    assert all(-1.0 <= out[f"text_cosine_after_{a}_swap"] <= 1.0 for a in diag.ATTRIBUTE_WORDS)
    assert all(0.0 <= out[f"probe_{label}"] <= 100.0 for label in diag.PROBE_LABELS)
