"""Incremental detokenization and stop strings for one request.

Text deltas follow the prefix/read-offset scheme of vLLM's and TGI's incremental detokenizers: decode a short
window of recent tokens, emit only what is new, and hold back a delta that ends in an incomplete UTF-8
sequence (U+FFFD) until the next token completes it. Special tokens (EOS) are not part of the text.

Stop strings (vLLM semantics): generation ends right before the first occurrence of any stop string, and the
stop string is not emitted. Text that could still be the beginning of a stop string is held back until it is
either completed (then dropped) or ruled out (then emitted).
"""

from __future__ import annotations


class IncrementalDetokenizer:
    """Turns a stream of generated token ids into text deltas.

    Args:
        tokenizer: a transformers tokenizer (`decode(ids, skip_special_tokens=True)`).
        stop: stop strings (may be empty).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self._tok = tokenizer
        self._stop = stop
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # all text decoded so far (truncated at a stop string once one is found)
        self._emitted = 0  # characters of `text` already handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Append one token; returns the text that is now safe to emit (possibly empty).

        Sets `stopped` when a stop string completed; the text then ends before it.
        """
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        window = self._decode(self._ids[self._prefix_offset:])
        if len(window) > len(prefix) and not window.endswith("\ufffd"):
            self.text += window[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        if self._stop:
            self._check_stop()
        return self._take(self._safe_end())

    def flush(self) -> str:
        """Everything not yet emitted (call once when the request finishes for a reason other than a stop)."""
        if not self.stopped and self._read_offset < len(self._ids):
            # a trailing incomplete character: emit what the tokenizer makes of it
            tail = self._decode(self._ids[self._prefix_offset:])[len(self._decode(
                self._ids[self._prefix_offset:self._read_offset])):]
            self.text += tail
            self._read_offset = len(self._ids)
        return self._take(len(self.text))

    def _check_stop(self) -> None:
        longest = max(map(len, self._stop))
        start = max(0, self._emitted - longest)
        hits = [i for i in (self.text.find(s, start) for s in self._stop) if i != -1]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def _safe_end(self) -> int:
        """End of the text that cannot be the start of a stop string."""
        if self.stopped or not self._stop:
            return len(self.text)
        for hold in range(min(max(map(len, self._stop)) - 1, len(self.text)), 0, -1):
            tail = self.text[-hold:]
            if any(s.startswith(tail) for s in self._stop):
                return len(self.text) - hold
        return len(self.text)

    def _take(self, end: int) -> str:
        end = max(end, self._emitted)
        delta = self.text[self._emitted:end]
        self._emitted = end
        return delta
