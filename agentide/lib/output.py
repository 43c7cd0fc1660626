"""Turning raw command output (bytes, arriving in arbitrary chunks) into safe text.

Pure helpers, no Django: the sandbox layer streams raw bytes, the notebook layer coalesces
them into events. Three guarantees hold for everything that passes through here:

- decoding is incremental UTF-8 with replacement, so a multi-byte character split across
  two chunks comes out whole and invalid bytes become U+FFFD instead of raising;
- NUL characters never come out (PostgreSQL text columns reject them);
- memory stays bounded: ``CappedOutput`` keeps a head and a tail of fixed size whatever the
  volume, and records the total.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

BINARY_SUMMARY = "[binary output: {size} bytes]"

# Bytes that appear in ordinary text output: TAB, LF, CR, ESC (colour codes), FF, BS.
_TEXT_CONTROLS = frozenset(b"\t\n\r\x1b\x0c\x08")
_MIN_BINARY_CHUNK = 64


def looks_binary(data: bytes, *, threshold: float = 0.30) -> bool:
    """Return True when ``data`` is mostly not text.

    A chunk (of at least 64 bytes) counts as binary when more than ``threshold`` of its
    bytes are control characters (NUL included) other than the usual whitespace/escape
    ones, or bytes that are not valid UTF-8. Text in another encoding (a stray Latin-1
    byte here and there) stays text and gets replacement characters instead.
    """
    if len(data) < _MIN_BINARY_CHUNK:
        # Too little to judge; decoding with replacement and NUL stripping keeps it safe.
        return False
    sample = data[:8192]
    controls = sum(1 for b in sample if (b < 0x20 and b not in _TEXT_CONTROLS) or b == 0x7F)
    invalid = sample.decode("utf-8", errors="replace").count("\ufffd")
    return (controls + invalid) / len(sample) > threshold


class StreamDecoder:
    """Incremental UTF-8 decoder for one output stream (stdout or stderr).

    ``feed(chunk)`` returns the text decodable so far; bytes of an incomplete trailing
    character are held back until the next chunk or ``finish()``. Mostly-binary chunks are
    replaced by one summary line per run of binary chunks (``[binary output: N bytes]``,
    emitted when text resumes or at ``finish()``). NUL characters are dropped.
    """

    def __init__(self, *, summarise_binary: bool = True) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._summarise_binary = summarise_binary
        self._binary_run = 0
        self.binary_bytes = 0

    def feed(self, data: bytes) -> str:
        """Decode one chunk; returns text safe to store (may be empty)."""
        if self._summarise_binary and looks_binary(data):
            prefix = ""
            if self._binary_run == 0:
                # Text lines that arrived in the same chunk just before the binary data
                # ("echo start; cat blob") are kept.
                cut = _leading_text_lines(data)
                if cut:
                    prefix = _strip_nul(self._decoder.decode(data[:cut]))
                    data = data[cut:]
                # Whatever partial character was pending belongs to the binary blob too.
                self._decoder.reset()
            self._binary_run += len(data)
            self.binary_bytes += len(data)
            return prefix
        prefix = self._flush_binary_run()
        return prefix + _strip_nul(self._decoder.decode(data))

    def finish(self) -> str:
        """Flush held-back bytes (as replacement characters) and any pending summary."""
        return self._flush_binary_run() + _strip_nul(self._decoder.decode(b"", final=True))

    def _flush_binary_run(self) -> str:
        if not self._binary_run:
            return ""
        summary = BINARY_SUMMARY.format(size=self._binary_run) + "\n"
        self._binary_run = 0
        return summary


def _leading_text_lines(data: bytes) -> int:
    """Length of the complete lines at the start of ``data`` before its first control byte."""
    for i, b in enumerate(data):
        if (b < 0x20 and b not in _TEXT_CONTROLS) or b == 0x7F:
            return data.rfind(b"\n", 0, i) + 1
    return 0


def _strip_nul(text: str) -> str:
    return text.replace("\x00", "") if "\x00" in text else text


def decode_output(data: bytes) -> str:
    """Decode a complete byte string with the same rules as ``StreamDecoder``."""
    decoder = StreamDecoder()
    return decoder.feed(data) + decoder.finish()


@dataclass
class CappedOutput:
    """A bounded head + tail capture of a text stream.

    Keeps the first ``head_chars`` characters and the last ``tail_chars`` characters of
    everything appended, and counts the total. Memory is O(head_chars + tail_chars) however
    much is appended: appending 50 MB costs no more than appending 50 KB once the head is full.
    """

    head_chars: int = 64 * 1024
    tail_chars: int = 64 * 1024
    total_chars: int = 0
    _head: list[str] = field(default_factory=list, repr=False)
    _head_len: int = 0
    _tail: list[str] = field(default_factory=list, repr=False)
    _tail_len: int = 0

    def append(self, text: str) -> None:
        """Add text at the end of the stream."""
        if not text:
            return
        self.total_chars += len(text)
        room = self.head_chars - self._head_len
        if room > 0:
            part = text[:room]
            self._head.append(part)
            self._head_len += len(part)
            text = text[room:]
            if not text:
                return
        if self.tail_chars <= 0:
            return
        if len(text) >= self.tail_chars:
            self._tail = [text[-self.tail_chars :]]
            self._tail_len = self.tail_chars
            return
        self._tail.append(text)
        self._tail_len += len(text)
        if self._tail_len > 2 * self.tail_chars:
            # Compact lazily so appends of small pieces stay O(1) amortised.
            joined = "".join(self._tail)[-self.tail_chars :]
            self._tail = [joined]
            self._tail_len = len(joined)

    @property
    def head(self) -> str:
        return "".join(self._head)

    @property
    def tail(self) -> str:
        joined = "".join(self._tail)
        return joined[-self.tail_chars :] if self.tail_chars > 0 else ""

    @property
    def truncated(self) -> bool:
        """True when characters between the head and the tail were dropped."""
        return self.total_chars > self._head_len + len(self.tail)

    @property
    def omitted_chars(self) -> int:
        return self.total_chars - self._head_len - len(self.tail)

    def text(self, *, marker: str = "\n[... {omitted} characters omitted ...]\n") -> str:
        """The kept text: head, a note saying how much was left out (if any), tail."""
        if not self.truncated:
            return self.head + self.tail
        return self.head + marker.format(omitted=self.omitted_chars) + self.tail
