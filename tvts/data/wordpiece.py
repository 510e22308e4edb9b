"""BERT's WordPiece tokenizer from a user-supplied `vocab.txt`, for the TVTS v1 DistilBERT text tower.

The official v1 trainer tokenizes with `AutoTokenizer.from_pretrained('distilbert-base-uncased')` and
`tokenizer(texts, padding=True, truncation=True, max_length=50)` (docs/published_recipe.md, "TVTS v1"). That tokenizer
is BERT's uncased WordPiece, which the Hugging Face `tokenizers` library builds from the vocabulary file alone (no
torch, no download):

1. normalise: control characters dropped and whitespace unified, spaces put around CJK ideographs, lowercased, accents
   stripped (NFD, combining marks removed);
2. pre-tokenise: split on whitespace and around every punctuation character;
3. WordPiece: per word, the longest vocabulary prefix, then the longest `##` continuation, and so on; a word with no
   such split (or longer than 100 characters) becomes `[UNK]`;
4. `[CLS] ids [SEP]`, truncated so the whole row is at most `context_length` (50) tokens, padded with `[PAD]`.

Rows are padded to a fixed `context_length` here, not to the batch's longest text as the official call does: the
text tower masks `[PAD]` keys out of attention and reads the first token, so the features are the same either way
and every batch has one shape. The vocabulary's `[PAD]` id must be the tower's `pad_token_id` (0 in BERT's files).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
MAX_LENGTH = 50  # the official trainer's truncation (v1/trainer/trainer.py:130-131)


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    """`vocab.txt` as BERT reads it: one token per line, its id the line number."""
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    vocab = {token: i for i, token in enumerate(tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: the vocabulary lacks {', '.join(missing)}")
    return vocab


class WordPieceTokenizer:
    """`tok(texts)` gives int32 `[N, context_length]` rows of `[CLS] ids [SEP]` padded with the `[PAD]` id."""

    def __init__(self, vocab_path: str | os.PathLike, context_length: int = MAX_LENGTH, lowercase: bool = True):
        try:
            from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
        except ImportError:
            raise ImportError("the WordPiece tokenizer needs the 'tokenizers' package: pip install tokenizers") \
                from None
        if context_length < 2:
            raise ValueError(f"context_length={context_length}: need room for [CLS] and [SEP]")
        self.vocab_path = os.fspath(vocab_path)
        self.context_length = int(context_length)
        self.vocab = read_vocab(self.vocab_path)
        self.vocab_size = max(self.vocab.values()) + 1
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (self.vocab[t] for t in SPECIAL_TOKENS)
        tok = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None strips them when lowercasing, as BERT's uncased tokenizer does
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)])
        self._plain = tok  # neither truncates nor pads (`encode`)
        self._rows: dict[int, Tokenizer] = {}  # length -> a copy that truncates and pads to it

    def _for_length(self, length: int):
        if length not in self._rows:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self._plain.to_str())
            # truncation counts [CLS] and [SEP] in the length, as the official call does
            tok.enable_truncation(max_length=length)
            tok.enable_padding(length=length, pad_id=self.pad_id, pad_token="[PAD]")
            self._rows[length] = tok
        return self._rows[length]

    def encode(self, text: str) -> list[int]:
        """WordPiece ids of `text`, without [CLS] / [SEP], not truncated."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        if length < 2:
            raise ValueError(f"context_length={length}: need room for [CLS] and [SEP]")
        encoded = self._for_length(length).encode_batch(list(texts))
        return np.asarray([e.ids for e in encoded], np.int32).reshape(len(texts), length)


@functools.cache
def get_wordpiece_tokenizer(vocab_path: str, context_length: int = MAX_LENGTH) -> WordPieceTokenizer:
    """One shared tokenizer per (vocabulary file, length)."""
    return WordPieceTokenizer(vocab_path, context_length)
