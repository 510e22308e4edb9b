"""CLIP's byte-level BPE tokenizer, in numpy, for OpenAI CLIP / OpenCLIP text towers.

Gives the same token ids as OpenCLIP's ``SimpleTokenizer`` (default ``clean='lower'``), which is
what the CLIP text-tower checkpoints were trained with:

1. clean: ``ftfy.fix_text``, HTML entities unescaped (twice, so ``&amp;amp;`` becomes ``&``),
   runs of whitespace collapsed to one space, ends stripped, lowercased;
2. pre-tokenise with CLIP's pattern: the special-token strings, the English clitics
   ``'s 't 're 've 'm 'll 'd``, runs of letters, single digits, runs of other non-space symbols;
3. map each piece's UTF-8 bytes to printable characters (GPT-2's reversible byte table), mark the
   piece's last symbol with ``</w>`` and apply the first 48894 merges of
   ``bpe_simple_vocab_16e6.txt`` lowest rank first.

Ids: 0-255 the single byte symbols, 256-511 the same followed by ``</w>``, then one id per merge,
then ``<start_of_text>`` (49406) and ``<end_of_text>`` (49407). Note that id 0 is the byte ``!``,
so it can appear inside an encoded text (``"!~"`` encodes to ``[0, 349]``); it is padding only
after the end-of-text token.

The vocabulary file is MIT-licensed and comes from the open-clip-torch wheel; see vocab/LICENSE.
"""
from __future__ import annotations

import functools
import gzip
import html
import os
from collections.abc import Iterable, Sequence

import ftfy
import numpy as np
import regex

SOT_TOKEN = 49406
EOT_TOKEN = 49407
VOCAB_SIZE = 49408
PAD_TOKEN = 0

_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48894: the vocab file holds more merges than CLIP uses
_SOT_TEXT = "<start_of_text>"
_EOT_TEXT = "<end_of_text>"
_END_OF_WORD = "</w>"
_DEFAULT_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vocab", "bpe_simple_vocab_16e6.txt.gz")
_CACHE_LIMIT = 1 << 20  # BPE results kept per tokenizer before the cache is reset (bounds memory)
_TEXT_CACHE_LIMIT = 1 << 16  # whole texts kept likewise: ftfy's cleaning costs more than the BPE

# CLIP's pre-tokenisation pattern (matched case-insensitively, as CLIP does; the text is lowercase
# by then anyway). A literal special-token string in the text becomes that special token, as in
# OpenCLIP.
_PATTERN = regex.compile(
    "|".join([
        regex.escape(_SOT_TEXT),
        regex.escape(_EOT_TEXT),
        r"'s", r"'t", r"'re", r"'ve", r"'m", r"'ll", r"'d",
        r"\p{L}+",
        r"\p{N}",
        r"[^\s\p{L}\p{N}]+",
    ]),
    regex.IGNORECASE,
)


@functools.cache
def byte_to_char() -> dict[int, str]:
    """The reversible byte -> character table: printable Latin-1 bytes stand for themselves, the
    rest (controls, space, NBSP, soft hyphen) are moved to U+0100 onwards in byte order. Its
    iteration order (printable bytes first) is the id order of the 256 single-byte symbols."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    for offset, b in enumerate(shifted):
        table[b] = chr(256 + offset)
    return table


def clean_text(text: str) -> str:
    """CLIP's text normalisation: ftfy, HTML unescape (twice), whitespace collapse, lowercase."""
    # ftfy fixes mojibake, control characters and HTML entities, and leaves printable ASCII without '&' as it is
    # (tests/test_tokenizer.py checks this); skipping it there halves the tokenizer's time on such text
    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


@functools.cache
def _load_vocab(path: str) -> tuple[list[str], dict[str, int], dict[tuple[str, str], int]]:
    """(id -> token, token -> id, merge pair -> rank) for a vocab file; read once per process and
    shared, read-only, by every Tokenizer using that file."""
    merges = _read_merges(path)
    symbols = list(byte_to_char().values())
    vocab = symbols + [s + _END_OF_WORD for s in symbols] + [a + b for a, b in merges] + [_SOT_TEXT, _EOT_TEXT]
    encoder = {token: i for i, token in enumerate(vocab)}
    if len(encoder) != VOCAB_SIZE:
        raise ValueError(f"{path}: {len(encoder)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab, encoder, {pair: rank for rank, pair in enumerate(merges)}


def _read_merges(path: str) -> list[tuple[str, str]]:
    with gzip.open(path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP keeps the next 48894 merge rules.
    rules = lines[1:1 + _NUM_MERGES]
    merges = []
    for n, line in enumerate(rules, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected a merge rule 'a b', got {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != _NUM_MERGES:
        raise ValueError(f"{path}: {len(merges)} merge rules, CLIP needs {_NUM_MERGES}")
    return merges


class Tokenizer:
    """CLIP BPE tokenizer. ``tok(texts)`` gives int32 ``[N, context_length]`` rows of
    ``SOT + ids + EOT`` zero-padded; longer texts are cut so EOT stays in the last position."""

    def __init__(self, context_length: int = 77, vocab_path: str | None = None):
        if context_length < 2:
            raise ValueError(f"context_length={context_length}: need room for SOT and EOT")
        self.context_length = int(context_length)
        self.vocab_path = vocab_path or _DEFAULT_VOCAB

        self._byte_to_char = byte_to_char()
        self._char_to_byte = {c: b for b, c in self._byte_to_char.items()}
        self._decoder, self._encoder, self._ranks = _load_vocab(os.path.abspath(self.vocab_path))
        self.vocab_size = VOCAB_SIZE
        self.sot_token, self.eot_token = SOT_TOKEN, EOT_TOKEN
        # BPE cache: piece (as the pattern split it from the cleaned text) -> its ids. Keyed before the byte
        # mapping, so a cached piece costs one lookup.
        self._cache: dict[str, tuple[int, ...]] = {}
        # Text cache: raw text -> its ids. Transcripts and captions repeat (a corpus's stock phrases).
        self._text_cache: dict[str, tuple[int, ...]] = {}

    # -- BPE ----------------------------------------------------------------------------------
    def _bpe(self, piece: str) -> tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        word = [self._byte_to_char[b] for b in piece.encode("utf-8")]
        word[-1] += _END_OF_WORD
        ranks = self._ranks
        while len(word) > 1:
            best_rank, best = None, None
            for pair in zip(word, word[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged, i, n = [], 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = tuple(self._encoder[symbol] for symbol in word)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    # -- public API ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after CLIP's cleaning, without SOT/EOT."""
        cached = self._text_cache.get(text)
        if cached is not None:
            return list(cached)
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            if piece == _SOT_TEXT:
                ids.append(SOT_TOKEN)
            elif piece == _EOT_TEXT:
                ids.append(EOT_TOKEN)
            else:
                ids.extend(self._bpe(piece))
        if len(self._text_cache) >= _TEXT_CACHE_LIMIT:
            self._text_cache.clear()
        self._text_cache[text] = tuple(ids)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` with SOT/EOT and padding left out. Word ends become single spaces and
        the result is stripped, so ``decode(encode(x)) == x`` for cleaned text whose words are
        separated by spaces (CLIP does not record whether punctuation was attached to a word).
        Padding is the run of zeros at the end: a 0 anywhere else is the byte ``!`` (an encoded
        text never ends in id 0, as its last symbol carries ``</w>``). Bytes that are not valid
        UTF-8 decode to U+FFFD."""
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"decode takes one sequence of ids, got shape {arr.shape}")
        seq = [int(i) for i in arr]
        while seq and seq[-1] == PAD_TOKEN:
            seq.pop()
        pieces = []
        for i in seq:
            if i == SOT_TOKEN or i == EOT_TOKEN:
                continue
            if not 0 <= i < VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {VOCAB_SIZE})")
            pieces.append(self._decoder[i])
        chars = "".join(pieces)
        # Word-end markers become spaces; the remaining characters each stand for one byte.
        out = bytearray()
        for word in chars.split(_END_OF_WORD):
            out.extend(self._char_to_byte[c] for c in word)
            out.append(0x20)
        return out.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        ctx = int(context_length or self.context_length)
        if ctx < 2:
            raise ValueError(f"context_length={ctx}: need room for SOT and EOT")
        out = np.zeros((len(texts), ctx), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = self.encode(text)[:ctx - 2]
            out[row, 0] = SOT_TOKEN
            out[row, 1:1 + len(ids)] = ids
            out[row, 1 + len(ids)] = EOT_TOKEN
        return out


@functools.cache
def get_tokenizer(context_length: int = 77) -> Tokenizer:
    """The shared tokenizer for ``context_length``. Tokenizers of any length share one copy of
    the vocabulary, read the first time it is needed."""
    return Tokenizer(context_length)


# ------------------------------------------------------------------------------------------------------------------
# Which tokenizer: CLIP's BPE (TVTSv2's text towers) or BERT's WordPiece (TVTS v1's DistilBERT, tvts.data.wordpiece)
# ------------------------------------------------------------------------------------------------------------------
TOKENIZERS = ("clip_bpe", "wordpiece")


def text_tokenizer(name: str = "clip_bpe", context_length: int = 77, vocab_path: str = ""):
    """The shared tokenizer `name` ('clip_bpe' or 'wordpiece'), called as `tok(texts, length=None)` -> int32
    [N, length]. WordPiece reads `vocab_path` (a vocab.txt); CLIP's BPE has its vocabulary built in."""
    if name == "clip_bpe":
        if vocab_path:
            raise ValueError(f"tokenizer 'clip_bpe' has its vocabulary built in; got vocab_path={vocab_path!r}")
        return get_tokenizer(context_length)
    if name == "wordpiece":
        if not vocab_path:
            raise ValueError("tokenizer 'wordpiece' needs a vocab.txt (vocab_path)")
        from tvts.data.wordpiece import get_wordpiece_tokenizer

        return get_wordpiece_tokenizer(os.path.abspath(os.fspath(vocab_path)), int(context_length))
    raise ValueError(f"unknown tokenizer {name!r}; known {', '.join(TOKENIZERS)}")


def tokenizer_for_spec(spec, directory=None):
    """The tokenizer a preprocessing spec names (`tvts.models.inputs.PreprocessSpec`, or an exported backbone's
    spec dict). A relative `vocab_path` (an exported backbone's 'vocab.txt') is read from `directory`."""
    get = spec.get if isinstance(spec, dict) else lambda k, d=None: getattr(spec, k, d)
    name, vocab = get("tokenizer", "clip_bpe") or "clip_bpe", get("vocab_path", "") or ""
    if vocab and directory is not None and not os.path.isabs(vocab) and "://" not in vocab:
        vocab = os.path.join(os.fspath(directory), vocab)
    return text_tokenizer(name, int(get("context_length")), vocab)
