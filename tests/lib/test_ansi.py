"""Terminal output to HTML: colours as classes, everything escaped, CR overwrites."""

from __future__ import annotations

from agentide.lib import ansi


def test_colours_become_classes_and_text_is_escaped():
    html = ansi.render_html("\x1b[1;31m<script>alert(1)</script>\x1b[0m ok")
    assert html == '<span class="a-f1 a-bold">&lt;script&gt;alert(1)&lt;/script&gt;</span> ok'


def test_other_escape_sequences_and_controls_are_dropped():
    assert ansi.render_html("a\x1b[2Kb\x1b]0;title\x07c\x07d\x00e") == "abcde"


def test_carriage_returns_overwrite_the_line():
    assert ansi.plain_text("10%\r50%\r100%\ndone\r\n") == "100%\ndone\n"
    assert ansi.render_html("x\n10%\r99%", collapse_cr=True) == "x\n99%"


def test_a_trailing_carriage_return_waits_for_more_text():
    assert ansi.render_html("50%\r") == '50%<span class="cr"></span>'


def test_the_tracker_carries_style_across_chunks_and_holds_partial_escapes():
    tracker = ansi.StyleTracker()
    assert tracker.split("\x1b[32mgreen\x1b[") == ("", "\x1b[32mgreen")
    sgr, text = tracker.split("1mbold")
    assert text == "\x1b[1mbold"
    assert ansi.render_html(text, sgr=sgr) == '<span class="a-f2 a-bold">bold</span>'
    assert tracker.split("\x1b[0mplain")[1] == "\x1b[0mplain"
    assert tracker.sgr == ""
