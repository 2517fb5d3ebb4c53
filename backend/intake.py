"""Checks on prompt text at request intake, before any tokenizer sees it (no torch).

- `text_problem`: a Python string can hold a lone surrogate (U+D800..U+DFFF, from JSON's `"\\ud83d"` or a
  `surrogateescape`d byte); it has no UTF-8 encoding, and a fast tokenizer fails on it with `TypeError`.
- `ContextLengthError`: the `ValueError` for a prompt longer than the context.
- `max_token_chars`: the most characters of text one token can stand for, read once from the tokenizer's
  vocabulary. A text longer than `max_model_len * max_token_chars` characters needs more than `max_model_len`
  tokens, so it is refused without tokenizing it (issue #9 reports 266 s and 9.7 GB to tokenize a 50 MB line).
"""

from __future__ import annotations

import json
import re
import weakref



class ContextLengthError(ValueError):
    """A prompt that cannot fit in the model's context (`max_model_len` tokens), by its token count or, before
    tokenizing, by its length in characters (exported as `backend.ContextLengthError`; the HTTP server answers
    it with OpenAI's `context_length_exceeded`). A `ValueError`, so callers that catch those still do."""


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Pre-tokenizers that keep every character (ByteLevel maps each byte to one character; Metaspace maps a
# space to one; the others only cut the text). Whitespace, WhitespaceSplit, BertPreTokenizer,
# CharDelimiterSplit and a `removed` Split drop characters, so a token could stand for more text.
_KEEPING_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Digits", "Punctuation", "UnicodeScripts", "Split"}
_bounds: "weakref.WeakKeyDictionary[object, int | None]" = weakref.WeakKeyDictionary()


def text_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8, or None when it can (exported as `backend.text_problem`: the
    app's parsers refuse exactly what the engine refuses).

    Returns:
        e.g. `not valid UTF-8 text: a lone surrogate \\ud83d at character 3` (the surrogate written as an
        escape, so the message itself is valid text).
    """
    m = _LONE_SURROGATE.search(text)
    if m is None:
        return None
    return f"not valid UTF-8 text: a lone surrogate \\u{ord(m.group()):04x} at character {m.start()}"


def max_token_chars(tokenizer) -> int | None:
    """The most characters of input text that one token of `tokenizer` can stand for (computed once per
    tokenizer, then cached), or None when no such bound holds.

    The bound is the longest token string of the vocabulary (added tokens included). It holds for fast
    tokenizers without a normalizer (which could shrink the text, e.g. NFKC), whose pre-tokenizer drops no
    character, whose model is BPE that never fuses a run of unknown characters into one unknown token, and
    whose added tokens strip no surrounding whitespace: byte-level BPE (SmolLM2, Llama 3, GPT-2,
    every `random:` preset) and SentencePiece-style BPE with byte fallback. A token's string has at least one
    character per character of text it stands for (ByteLevel: one per byte; byte fallback `<0x41>`: six for
    one byte).
    """
    try:
        return _bounds[tokenizer]
    except (KeyError, TypeError):
        pass
    bound = _compute_bound(tokenizer)
    try:
        _bounds[tokenizer] = bound
    except TypeError:  # not weak-referenceable: computed again next time
        pass
    return bound


def _compute_bound(tokenizer) -> int | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if spec.get("normalizer") is not None or not _keeps_characters(spec.get("pre_tokenizer")):
        return None
    if model.get("type") != "BPE" or (model.get("unk_token") is not None and model.get("fuse_unk")
                                      and not model.get("byte_fallback")):
        return None
    if any(t.get("lstrip") or t.get("rstrip") for t in spec.get("added_tokens") or []):
        return None
    vocab = tokenizer.get_vocab()
    return max(map(len, vocab), default=0) or None


def _keeps_characters(pre: dict | None) -> bool:
    if pre is None:
        return True
    if pre.get("type") == "Sequence":
        return all(_keeps_characters(p) for p in pre.get("pretokenizers", []))
    if str(pre.get("behavior", "")).lower() == "removed":  # Split, Punctuation
        return False
    return pre.get("type") in _KEEPING_PRE_TOKENIZERS
