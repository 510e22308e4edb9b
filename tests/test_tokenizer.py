"""CLIP BPE tokenizer: ids must equal those of the reference CLIP tokenizer.

Every pinned id below was computed with OpenCLIP's reference ``open_clip.tokenizer.SimpleTokenizer``
(open-clip-torch 3.3.0 from PyPI, default settings, with torch 2.13.0 CPU) installed in a scratch
virtualenv outside this repository -- not with tvts's own tokenizer. tvts does not depend on
open_clip or torch. "a photo of a cat" -> 49406, 320, 1125, 539, 320, 2368, 49407 are also the
well-known OpenAI CLIP ids.
"""
import os

import numpy as np
import pytest

from tvts.data import tokenizer as tk
from tvts.data.tokenizer import EOT_TOKEN, SOT_TOKEN, VOCAB_SIZE, Tokenizer, get_tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer()


# (text, SimpleTokenizer().encode(text)) from the OpenCLIP reference.
ENCODE_CASES = [
    ("a photo of a cat", [320, 1125, 539, 320, 2368]),
    ("Hello, world!!", [3306, 267, 1002, 748]),
    ("Café crème brûlée, naïve résumé",
     [15304, 1075, 12138, 614, 711, 127, 119, 75, 13489, 267, 1097, 35689, 563, 29106, 7054, 4166]),
    ("I ❤️ my 🐱 and 🐶 🎉", [328, 1752, 607, 22979, 537, 10631, 3986]),
    ("日本語のテキスト", [39121, 44353, 34002, 252, 21575, 2429, 228, 47121, 32421, 486]),
    ("中文 한국어 Ελληνικά Русский",
     [19759, 255, 29032, 485, 15197, 250, 31871, 255, 31625, 368, 138, 113, 138, 119, 138, 119, 138, 115,
      138, 121, 138, 117, 138, 118, 138, 361, 16370, 39729, 23669, 23669, 27152, 29503, 373]),
    ("Tom &amp; Jerry &lt;3 &quot;quoted&quot; &amp;amp; &#39;x&#39;",
     [2435, 261, 9164, 283, 274, 257, 27706, 257, 261, 262, 343, 262]),
    ("  a\tphoto \n\n of   a\u3000cat\xa0 ", [320, 1125, 539, 320, 2368]),
    ("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", [518, 19143, 7424, 2503, 713, 720, 19923, 269]),
    ("They're here, isn't it? We'll see; I'd've",
     [889, 982, 763, 267, 2923, 713, 585, 286, 649, 1342, 862, 282, 328, 1896, 1200]),
    ("In 2024, 3.14 > 2", [530, 273, 271, 273, 275, 267, 274, 269, 272, 275, 285, 273]),
    ("!%$ !~", [0, 4, 259, 0, 349]),  # id 0 is the byte '!', not only padding
    ("jekyll", [49405]),  # the last of the 48894 merges CLIP uses
    ("<end_of_text>", [49407]),  # OpenCLIP turns the literal special-token string into the token
    ("", []),
]


@pytest.mark.parametrize("text,ids", ENCODE_CASES, ids=[repr(t)[:24] for t, _ in ENCODE_CASES])
def test_encode_matches_reference(tok, text, ids):
    assert tok.encode(text) == ids


def test_constants(tok):
    assert (SOT_TOKEN, EOT_TOKEN, VOCAB_SIZE) == (49406, 49407, 49408)
    assert tok.vocab_size == VOCAB_SIZE


def test_a_photo_of_a_cat_row(tok):
    out = tok("a photo of a cat")
    assert out.shape == (1, 77) and out.dtype == np.int32
    expected = np.zeros(77, np.int32)
    expected[:7] = [49406, 320, 1125, 539, 320, 2368, 49407]
    np.testing.assert_array_equal(out[0], expected)


def test_long_text_truncated_with_eot_last(tok):
    text = "The quick brown fox jumps over the lazy dog. " * 10  # 100 BPE ids
    # Reference row: SOT, the first 75 ids (cut after "jumps"), EOT at position 76.
    cycle = [518, 3712, 2866, 3240, 18911, 962, 518, 10753, 1929, 269]
    expected = [49406] + (cycle * 8)[:75] + [49407]
    out = tok(text)
    assert out.shape == (1, 77)
    np.testing.assert_array_equal(out[0], expected)
    assert out[0, -1] == EOT_TOKEN and out[0, -2] == 18911


def test_empty_and_blank_strings(tok):
    expected = np.zeros((2, 77), np.int32)
    expected[:, :2] = [SOT_TOKEN, EOT_TOKEN]
    np.testing.assert_array_equal(tok(["", " \n\t "]), expected)


def test_batch_shape_dtype_padding(tok):
    texts = ["a dog", "", "Hello, world!!", "a photo of a cat " * 5]
    out = tok(texts, context_length=16)
    # SimpleTokenizer()(texts, context_length=16) from the reference.
    expected = [
        [49406, 320, 1929, 49407] + [0] * 12,
        [49406, 49407] + [0] * 14,
        [49406, 3306, 267, 1002, 748, 49407] + [0] * 10,
        [49406, 320, 1125, 539, 320, 2368, 320, 1125, 539, 320, 2368, 320, 1125, 539, 320, 49407],
    ]
    assert out.shape == (4, 16) and out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    # A tuple or numpy array of strings works too; the instance default length applies otherwise.
    np.testing.assert_array_equal(tok(tuple(texts), 16), out)
    np.testing.assert_array_equal(tok(np.array(texts), 16), out)
    assert tok(texts).shape == (4, 77)
    assert Tokenizer(context_length=8)("a dog").shape == (1, 8)


@pytest.mark.parametrize("ids,text", [
    # SimpleTokenizer().decode(ids) is "hello , world !! " and "!%$ !~ "; tvts strips the end.
    ([3306, 267, 1002, 748], "hello , world !!"),
    ([0, 4, 259, 0, 349], "!%$ !~"),
    ([49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 70, "a photo of a cat"),
    ([], ""),
])
def test_decode_pinned(tok, ids, text):
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, np.int32)) == text


@pytest.mark.parametrize("text", [
    "a photo of a cat",
    "the quick brown fox jumps over the lazy dog",
    "café crème brûlée naïve résumé",
    "日本語のテキスト 中文 한국어",
    "i ❤️ my 🐱",
    "!%$ !~ 1 2 3",
    "jekyll and hyde",
])
def test_decode_encode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok(text)[0]) == text


def test_decode_rejects_bad_input(tok):
    with pytest.raises(ValueError):
        tok.decode(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError):
        tok.decode([VOCAB_SIZE])


def test_every_id_decodes(tok):
    # Every non-special id maps to a vocab entry; spot-check against the reference decoder table.
    assert tok._decoder[0] == "!" and tok._decoder[256] == "!</w>"
    assert tok._decoder[511] == "Ń</w>" and tok._decoder[512] == "in" and tok._decoder[49405] == "jekyll</w>"
    for i in range(0, SOT_TOKEN, 97):
        assert isinstance(tok.decode([i]), str)


def test_get_tokenizer_is_shared():
    assert get_tokenizer() is get_tokenizer()
    assert get_tokenizer(32) is get_tokenizer(32)
    assert get_tokenizer(32).context_length == 32
    # One vocabulary per process, whatever the context length.
    assert get_tokenizer(32)._encoder is get_tokenizer()._encoder is Tokenizer(8)._encoder


def test_vocab_ships_with_package():
    vocab_dir = os.path.join(os.path.dirname(tk.__file__), "vocab")
    assert os.path.isfile(os.path.join(vocab_dir, "bpe_simple_vocab_16e6.txt.gz"))
    with open(os.path.join(vocab_dir, "LICENSE")) as f:
        assert "Permission is hereby granted, free of charge" in f.read()


def test_repeated_texts_come_from_the_cache_unchanged(tok):
    text = "now the red circle moves to the left &amp; you see"
    first = tok.encode(text)
    first.append(-1)                                   # a caller mutating its result ...
    assert tok.encode(text) == first[:-1]              # ... does not reach the cached ids
    fresh = Tokenizer()                                # a new tokenizer: empty caches
    assert fresh.encode(text) == first[:-1]
    np.testing.assert_array_equal(tok([text, text]), fresh([text, text]))


def test_ftfy_is_skipped_only_where_it_changes_nothing():
    """`clean_text` skips ftfy on printable ASCII without '&'; on such text ftfy returns its input. Checked on
    random strings over every printable ASCII character but '&', and on the synthetic corpus's texts."""
    import ftfy

    from tvts.data.synthetic import SyntheticCorpus

    rng = np.random.default_rng(0)
    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"]
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 80)))) for _ in range(3000)]
    corpus = SyntheticCorpus()
    for i in range(50):
        texts += [corpus.video(i, "captioned").caption, *corpus.video(i, "transcribed").transcripts]
    for text in texts:
        assert ftfy.fix_text(text) == text, text
    # outside the skipped set, ftfy still runs: an entity and mojibake are fixed as before
    assert tk.clean_text("Tom &amp; Jerry") == "tom & jerry"
    assert tk.clean_text("doesnÃ¢â‚¬â„¢t") == "doesn't"
