"""Any bytes a command writes, or any text an import carries, render safely: the ANSI parser
and the renderers never raise, never let markup through, and stay bounded in size."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from agentide.lib import ansi
from agentide.lib.output import StreamDecoder, decode_output
from agentide.sessions.templatetags import notebook

HUGE_SGR = "\x1b[" + "9" * 5000 + "m"

# Text rich in the characters the parser cares about, plus anything at all.
TERMINAL_ALPHABET = st.sampled_from(
    ["\x1b", "[", "]", ";", "m", "\r", "\n", "\x07", "\\", "<", "&", '"', "0", "1", "3", "8",
     "9", "5", "2", "?", " ", "K", "\x00", "\x9b", "\ud800", "²", "a"]
)  # fmt: skip
TERMINAL_TEXT = st.one_of(
    st.text(),
    st.lists(st.one_of(TERMINAL_ALPHABET, st.text(max_size=3)), max_size=200).map("".join),
    st.binary().map(decode_output),
)
SGR = st.one_of(st.text(max_size=40), st.sampled_from(["", "1", "38;5;3", "9" * 5000, "²"]))

_OUR_MARKUP = re.compile(r'<span class="[a-z0-9 -]*">|</span>')
_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|#x27);")


def assert_safe_html(html: str, text: str) -> None:
    rest = _ENTITY.sub("", _OUR_MARKUP.sub("", html))
    assert "<" not in rest and ">" not in rest and "&" not in rest and '"' not in rest
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]", html)
    html.encode("utf-8")  # a response can always be encoded
    # Bounded: escaping grows a character at most 6 times, each styled piece costs a span.
    assert len(html) <= 80 * len(text) + 100


@settings(max_examples=400, deadline=None)
@given(text=TERMINAL_TEXT, sgr=SGR)
def test_parsing_never_raises_and_html_is_escaped_and_bounded(text: str, sgr: str) -> None:
    segments, style = ansi.parse(text, sgr=sgr)
    for segment in segments:
        assert segment.cr or segment.text
    assert len(style.params()) < 64
    for collapse_cr in (False, True):
        assert_safe_html(ansi.render_html(text, sgr=sgr, collapse_cr=collapse_cr), text)
    assert_safe_html(notebook.terminal(text, sgr), text)
    assert_safe_html(notebook.terminal_chunk(text, sgr), text)
    plain = ansi.plain_text(text)
    assert "\x1b" not in plain and len(plain) <= len(text)


@settings(max_examples=200, deadline=None)
@given(text=TERMINAL_TEXT, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_the_tracker_loses_no_text_however_it_is_chunked(text: str, cuts: list[int]) -> None:
    tracker = ansi.StyleTracker()
    points = sorted({c % (len(text) + 1) for c in cuts})
    out = []
    for start, end in zip([0, *points], [*points, len(text)], strict=True):
        sgr, piece = tracker.split(text[start:end])
        assert_safe_html(ansi.render_html(piece, sgr=sgr), piece)
        out.append(piece)
    out.append(tracker.flush()[1])
    assert "".join(out) == text


@settings(max_examples=200, deadline=None)
@given(text=TERMINAL_TEXT, sgr=SGR)
def test_the_style_after_a_chunk_is_the_one_the_renderer_ends_with(text: str, sgr: str) -> None:
    # The tracker follows styles without parsing the text into segments (the renderer does
    # that, once): both must agree on where a chunk leaves the style.
    assert ansi.style_after(text, sgr=sgr).params() == ansi.parse(text, sgr=sgr)[1].params()


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=10))
def test_decoding_any_bytes_never_raises_and_never_yields_nul(chunks: list[bytes]) -> None:
    decoder = StreamDecoder()
    text = "".join(decoder.feed(chunk) for chunk in chunks) + decoder.finish()
    assert "\x00" not in text
    text.encode("utf-8")


def test_a_5000_digit_parameter_is_ignored_and_the_text_kept() -> None:
    assert ansi.render_html(HUGE_SGR + "kept\x1b[1mbold") == 'kept<span class="a-bold">bold</span>'
    assert ansi.plain_text(HUGE_SGR + "kept") == "kept"
    tracker = ansi.StyleTracker()
    assert tracker.split(HUGE_SGR + "kept") == ("", HUGE_SGR + "kept")
    assert ansi.render_html("x", sgr="9" * 5000) == "x"


def test_a_long_but_bounded_style_split_across_chunks_is_held_back_whole() -> None:
    sequence = "\x1b[" + "00001;" * 30 + "31m"  # 185 characters, 31 numbers
    tracker = ansi.StyleTracker()
    assert tracker.split("before" + sequence[:120]) == ("", "before")
    sgr, text = tracker.split(sequence[120:] + "red")
    assert ansi.render_html(text, sgr=sgr) == '<span class="a-f1 a-bold">red</span>'


def test_sgr_parameters_are_bounded() -> None:
    assert ansi.sgr_codes("") == [0]
    assert ansi.sgr_codes("1;;31") == [1, 0, 31]
    assert ansi.sgr_codes("1;" + "9" * 6) == [1, -1]
    assert ansi.sgr_codes("²") == [-1]
    assert len(ansi.sgr_codes(";".join(["1"] * 100))) == ansi.MAX_SGR_CODES
    assert ansi.sgr_codes("1;" * 200) == []
