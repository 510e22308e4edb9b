"""How a config's texts are tokenised: which tokenizer (and vocabulary) and how many tokens per text of a source.

Its own module because both the in-memory pipeline (tvts/data/pipeline.py) and the file loader
(tvts/data/loader.py) need it, and the pipeline builds the loader's sources.
"""
from __future__ import annotations

from tvts.data.synthetic import wordpiece_vocab_path


def data_tokenizer(data_cfg) -> tuple[str, str]:
    """(tokenizer name, vocab path) of `config.data`: 'clip_bpe' (TVTSv2) or 'wordpiece' (TVTS v1) with its
    vocab.txt; WordPiece on the synthetic corpus without a vocab_path reads the corpus's own vocabulary
    (`tvts.data.synthetic.wordpiece_vocab_path`, built once in a cache). Configs saved before these fields existed
    read as CLIP's BPE."""
    name = data_cfg.get("tokenizer", "clip_bpe") or "clip_bpe"
    vocab = data_cfg.get("vocab_path", "") or ""
    if name == "wordpiece" and not vocab:
        if data_cfg.name != "synthetic":
            raise ValueError("config.data.vocab_path is empty: the WordPiece tokenizer needs the text tower's "
                             "vocab.txt")
        vocab = wordpiece_vocab_path()
    return name, vocab


def text_length(data_cfg, kind: str) -> int:
    """Tokens per text of a source: captions take `context_length`, transcripts `transcript_length` (-1: the same).

    The text tower is causal and pools at EOT, so padding after EOT never changes an embedding: a shorter
    length that still holds every transcript only removes work (4 transcripts per video, a few words each).
    Longer transcripts are truncated with their EOT kept, as at `context_length`. (TVTS v1's DistilBERT masks its
    padding out of attention and reads the first token: the same holds.)
    """
    if kind == "transcribed" and data_cfg.transcript_length > 0:
        return data_cfg.transcript_length
    return data_cfg.context_length
