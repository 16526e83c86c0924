"""A word-level tokenizer over the closed vocabulary of the mini world.

Why word level: the world's vocabulary is closed and small, so every word is one token (a ~1M-parameter model
then spends no capacity on spelling), digits are single tokens (arithmetic is learnable digit by digit),
identifiers split on `_`, and the 4-space indent is one token (so code stays short).

Pieces (the pre-tokenizer's regex, each match isolated): a word of ASCII letters with an optional leading space,
one digit with an optional leading space, a newline, a 4-space indent, one other symbol with an optional
leading space, or any other single whitespace character. The pieces concatenate back to the text, and the
`Fuse` decoder joins tokens without adding anything, so decode(encode(x)) == x for every text of the world.

Special tokens: `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3. Encoding never adds BOS/EOS (no post-processor,
even with add_special_tokens=True): training and scoring code add them where they want them. A word outside
the vocabulary becomes `<unk>` (the only case where the round trip is not exact). Callers set padding_side.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
PIECES = r" ?[A-Za-z]+| ?[0-9]|\n|    | ?[^A-Za-z0-9\s]|\s"


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The regex split into isolated pieces (see the module docstring)."""
    return pre_tokenizers.Split(Regex(PIECES), behavior="isolated", invert=False)


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer whose vocabulary is every piece of `texts`, most frequent first (ties by text),
    after the four special tokens; deterministic for the same texts in any order."""
    split = pre_tokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(piece for piece, _ in split.pre_tokenize_str(text))
    for special in SPECIAL_TOKENS:
        counts.pop(special, None)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = split
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False, model_max_length=1_000_000,
    )
