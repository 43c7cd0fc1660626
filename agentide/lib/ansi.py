"""Terminal output to safe HTML: ANSI SGR colours become CSS classes, everything else is text.

Pure helpers, no Django models. The output never contains markup from the input: text is
HTML-escaped, escape sequences other than SGR colours/styles are dropped, and colours map to
a fixed set of class names (the CSP forbids inline styles anyway).

A carriage return that is not part of ``\\r\\n`` means "the next text overwrites the line"
(progress bars). ``render_html(..., collapse=True)`` applies that when the whole text is
known; for live chunks the CR is kept as an empty ``<span class="cr">`` marker that the
browser collapses once the next text arrives (static/js/notebook.js does the same thing).

Any text is accepted (output is written by untrusted commands, and imported transcripts carry
arbitrary strings): parsing never raises, SGR parameters are bounded (a style sequence longer
than ``MAX_SGR_PARAMS_CHARS`` or a number longer than ``MAX_SGR_CODE_DIGITS`` is ignored, and
only the first ``MAX_SGR_CODES`` numbers count), and the HTML is at most a constant factor
larger than the text.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# CSI sequences (ESC [ params final), OSC (ESC ] ... BEL or ST), and two-byte escapes.
_ESCAPE = re.compile(
    r"\x1b\[(?P<params>[0-?]*)[ -/]*(?P<final>[@-~])"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[@-Z\\-_]"
)
# An escape sequence cut off at the end of a chunk: held back until more text comes.
_PARTIAL_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?$")
# Control characters other than TAB and LF (CR is handled separately).
# Control characters other than TAB and LF (CR is handled separately); in text between escape
# sequences a lone ESC is debris of a broken sequence. C1 controls and lone surrogates (which
# cannot be encoded in a response) go too.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CR = "\r"

# Real programs send a handful of short numbers ("1;38;5;208"); anything far longer is noise
# or an attack (a 5,000-digit number exceeds Python's int() limit).
MAX_SGR_PARAMS_CHARS = 256
MAX_SGR_CODES = 32
MAX_SGR_CODE_DIGITS = 5
# How far back from a chunk's end a cut-off escape sequence is looked for (and held back): a
# style sequence that fits the parameter bound is never split into visible debris.
_PARTIAL_WINDOW = MAX_SGR_PARAMS_CHARS + 16

log = logging.getLogger(__name__)


def sgr_codes(params: str) -> list[int]:
    """The numbers of an SGR parameter string (empty ones are 0; over-long ones are -1, an
    unknown code); [] for a string over ``MAX_SGR_PARAMS_CHARS``, which is ignored whole."""
    if not params:
        return [0]
    if len(params) > MAX_SGR_PARAMS_CHARS:
        return []
    codes = []
    for part in params.split(";")[:MAX_SGR_CODES]:
        if not part:
            codes.append(0)
        elif part.isascii() and part.isdigit() and len(part) <= MAX_SGR_CODE_DIGITS:
            codes.append(int(part))
        else:
            codes.append(-1)
    return codes


@dataclass
class Style:
    """The SGR state: colours are indices 0-15 (8-15 bright), or None for the default."""

    fg: int | None = None
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False

    def apply(self, params: str) -> None:
        codes = sgr_codes(params)
        i = 0
        while i < len(codes):
            code = codes[i]
            if code == 0:
                self.__init__()  # type: ignore[misc]
            elif code == 1:
                self.bold = True
            elif code == 2:
                self.dim = True
            elif code == 3:
                self.italic = True
            elif code == 4:
                self.underline = True
            elif code == 22:
                self.bold = self.dim = False
            elif code == 23:
                self.italic = False
            elif code == 24:
                self.underline = False
            elif 30 <= code <= 37:
                self.fg = code - 30
            elif 90 <= code <= 97:
                self.fg = code - 90 + 8
            elif code == 39:
                self.fg = None
            elif 40 <= code <= 47:
                self.bg = code - 40
            elif 100 <= code <= 107:
                self.bg = code - 100 + 8
            elif code == 49:
                self.bg = None
            elif code in (38, 48):
                # 256-colour (5;n) keeps the 16 basic colours; true colour (2;r;g;b) is dropped.
                if i + 2 < len(codes) and codes[i + 1] == 5:
                    n = codes[i + 2]
                    if n < 16:
                        if code == 38:
                            self.fg = n
                        else:
                            self.bg = n
                    i += 2
                elif i + 1 < len(codes) and codes[i + 1] == 2:
                    i += 4
            i += 1

    def classes(self) -> str:
        names = []
        if self.fg is not None:
            names.append(f"a-f{self.fg}")
        if self.bg is not None:
            names.append(f"a-b{self.bg}")
        if self.bold:
            names.append("a-bold")
        if self.dim:
            names.append("a-dim")
        if self.italic:
            names.append("a-it")
        if self.underline:
            names.append("a-ul")
        return " ".join(names)

    def params(self) -> str:
        """SGR parameters that recreate this state from the default (for the next chunk)."""
        parts = []
        if self.bold:
            parts.append("1")
        if self.dim:
            parts.append("2")
        if self.italic:
            parts.append("3")
        if self.underline:
            parts.append("4")
        if self.fg is not None:
            parts.append(f"38;5;{self.fg}")
        if self.bg is not None:
            parts.append(f"48;5;{self.bg}")
        return ";".join(parts)


@dataclass
class Segment:
    """A run of text in one style; ``cr`` marks a bare carriage return (text is empty)."""

    text: str
    classes: str = ""
    cr: bool = False


def parse(text: str, *, sgr: str = "") -> tuple[list[Segment], Style]:
    """Split ``text`` into styled segments, starting from SGR state ``sgr``.

    Returns the segments and the style in force at the end.
    """
    style = Style()
    if sgr:
        style.apply(sgr)
    text = text.replace("\r\n", "\n")
    segments: list[Segment] = []

    def add(piece: str) -> None:
        piece = _CONTROLS.sub("", piece)
        while piece:
            before, cr, piece = piece.partition(_CR)
            if before:
                segments.append(Segment(before, style.classes()))
            if cr:
                segments.append(Segment("", cr=True))

    pos = 0
    for match in _ESCAPE.finditer(text):
        add(text[pos : match.start()])
        if match.group("final") == "m":
            style.apply(match.group("params") or "")
        pos = match.end()
    add(text[pos:])
    return segments, style


def style_after(text: str, *, sgr: str = "") -> Style:
    """The SGR style in force after ``text``, starting from ``sgr``: what ``parse`` returns
    second, without splitting the text into segments."""
    style = Style()
    if sgr:
        style.apply(sgr)
    for match in _ESCAPE.finditer(text):
        if match.group("final") == "m":
            style.apply(match.group("params") or "")
    return style


def collapse(segments: list[Segment]) -> list[Segment]:
    """Apply carriage returns: text after a CR replaces the line's text before it.

    A CR directly before a newline (or followed by nothing yet) is kept as is, except that
    a CR followed by a newline is dropped.
    """
    out: list[Segment] = []
    pending_cr = False
    for seg in segments:
        if seg.cr:
            pending_cr = True
            continue
        if pending_cr:
            pending_cr = False
            if not seg.text.startswith("\n"):
                _erase_current_line(out)
        out.append(seg)
    if pending_cr:
        out.append(Segment("", cr=True))
    return out


def _erase_current_line(out: list[Segment]) -> None:
    while out:
        last = out[-1]
        if last.cr:
            out.pop()
            continue
        newline = last.text.rfind("\n")
        if newline >= 0:
            last.text = last.text[: newline + 1]
            return
        out.pop()


def to_html(segments: list[Segment]) -> SafeString:
    """Escaped HTML: one ``<span>`` per styled segment, ``<span class="cr">`` per marker."""
    parts = []
    for seg in segments:
        if seg.cr:
            parts.append('<span class="cr"></span>')
        elif seg.classes:
            parts.append(f'<span class="{seg.classes}">{escape(seg.text)}</span>')
        else:
            parts.append(str(escape(seg.text)))
    return mark_safe("".join(parts))  # noqa: S308 - every piece of text is escaped above


def render_html(text: str, *, sgr: str = "", collapse_cr: bool = False) -> SafeString:
    """Render terminal ``text`` as escaped HTML with colour classes.

    Never raises: should styling ever fail, the text comes out escaped without styles.
    """
    try:
        segments, _ = parse(text, sgr=sgr)
        if collapse_cr:
            segments = collapse(segments)
        return to_html(segments)
    except Exception:
        log.exception("styling terminal output failed; showing it unstyled")
        return to_html([Segment(_unstyled(text))])


def plain_text(text: str) -> str:
    """The plain text of terminal output: escape sequences and CR overwrites applied."""
    try:
        segments, _ = parse(text)
        return "".join(seg.text for seg in collapse(segments) if not seg.cr)
    except Exception:
        log.exception("reading terminal output failed; using it unstyled")
        return _unstyled(text)


def _unstyled(text: str) -> str:
    return _CONTROLS.sub("", _ESCAPE.sub("", text.replace("\r\n", "\n"))).replace(_CR, "")


@dataclass
class StyleTracker:
    """Follows the SGR state across the chunks of one stream.

    ``split(text)`` returns ``(sgr_at_start, complete_text)`` for the next chunk, holding back
    an escape sequence cut off at the end until the next call (or ``flush``).
    """

    sgr: str = ""
    _pending: str = field(default="", repr=False)

    def split(self, text: str) -> tuple[str, str]:
        text = self._pending + text
        self._pending = ""
        window = text[-_PARTIAL_WINDOW:]
        partial = _PARTIAL_ESCAPE.search(window)
        if partial:
            cut = len(text) - (len(window) - partial.start())
            text, self._pending = text[:cut], text[cut:]
        start = self.sgr
        if "\x1b" in text:
            # Only the style at the end matters here; the renderer parses the text itself.
            self.sgr = style_after(text, sgr=start).params()
        return start, text

    def flush(self) -> tuple[str, str]:
        text, self._pending = self._pending, ""
        return self.sgr, text
