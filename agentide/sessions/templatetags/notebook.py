"""Template filters of the notebook: terminal output, notes and durations, all escaped."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import markdown as markdown_lib
import nh3
from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from agentide.lib import ansi
from agentide.sandboxes.models import Sandbox
from agentide.sessions import changes, presence

register = template.Library()

_NOTE_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
}  # fmt: skip


@register.filter
def terminal(text: str, sgr: str = "") -> SafeString:
    """Terminal output as escaped HTML with colour classes; CR overwrites applied."""
    return ansi.render_html(text or "", sgr=sgr or "", collapse_cr=True)


@register.filter
def terminal_chunk(text: str, sgr: str = "") -> SafeString:
    """A live chunk of terminal output: like ``terminal`` but CRs stay markers for the
    browser to collapse once the next chunk arrives."""
    return ansi.render_html(text or "", sgr=sgr or "")


@register.filter
def note_markdown(text: str) -> SafeString:
    """Markdown rendered to HTML and sanitised: no scripts, styles or event handlers."""
    html = markdown_lib.markdown(text or "", extensions=["fenced_code", "tables"])
    clean = nh3.clean(
        html,
        tags=_NOTE_TAGS,
        attributes={"a": {"href", "title"}, "abbr": {"title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # noqa: S308 - sanitised by nh3 above


@register.filter
def duration_ms(value: int | None) -> str:
    """A short human duration: 420 ms, 3.2 s, 4 min 05 s."""
    if value is None:
        return ""
    if value < 1000:
        return f"{value} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def filesize(value: int | None) -> str:
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


@register.filter
def clip_output(text: str, cap: int) -> str:
    """The last ``cap`` characters of ``text``, starting at a line boundary if one is near."""
    if len(text) <= cap:
        return text
    clipped = text[-cap:]
    newline = clipped.find("\n")
    return clipped[newline + 1 :] if 0 <= newline < 4096 else clipped


@register.simple_tag
def session_rows(sessions: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows of a sessions list: each session with its viewers now and its sandbox state."""
    sessions = list(sessions)
    ids = [s.pk for s in sessions]
    states = dict(Sandbox.objects.filter(session_id__in=ids).values_list("session_id", "state"))
    try:
        viewers = presence.viewer_ids(ids)
    except Exception:  # presence is a nicety: a Redis hiccup must not break the page
        viewers = {}
    rows = []
    for session in sessions:
        state = states.get(session.pk, "none")
        rows.append(
            {
                "session": session,
                "viewers": len(viewers.get(session.pk, [])),
                "sandbox_state": state,
                "sandbox_running": state == "running",
            }
        )
    return rows


@register.simple_tag(takes_context=True)
def cell_files(context: template.Context, cell: Any) -> changes.FileChanges:
    """The "Files changed" summary of a cell of the notebook view (``notebook.CellView``);
    a page's cells share one query for their checkpoints."""
    session_id = context["session_id"]
    notebook = context.get("notebook")
    own = None
    if notebook is not None:
        own = notebook.extras.get("own_checkpoints")
        if own is None:
            own = changes.own_checkpoints(session_id, [c.checkpoints for c in notebook.cells])
            notebook.extras["own_checkpoints"] = own
    return changes.file_changes(session_id, cell.id, cell.kind, cell.checkpoints, own=own)


@register.simple_tag(takes_context=True)
def restored_from(context: template.Context, source: str) -> str:
    """What the checkpoint a restore cell went back to was taken for ("before cell #3")."""
    return changes.checkpoint_origin(context["session_id"], source)


@register.filter
def octal_mode(mode: int | None) -> str:
    """A file mode's permission bits as ``chmod`` writes them (``644``)."""
    return "" if mode is None else f"{mode & 0o7777:o}"


@register.filter
def diff_lines(text: str) -> SafeString:
    """A unified diff, escaped, each line marked as added, removed or a hunk header."""
    out = []
    for line in text.splitlines(keepends=True):
        escaped = escape(line)
        if line.startswith(("+++", "---")):
            out.append(f'<span class="dl-file">{escaped}</span>')
        elif line.startswith("+"):
            out.append(f'<span class="dl-add">{escaped}</span>')
        elif line.startswith("-"):
            out.append(f'<span class="dl-del">{escaped}</span>')
        elif line.startswith("@@"):
            out.append(f'<span class="dl-hunk">{escaped}</span>')
        else:
            out.append(escaped)
    return mark_safe("".join(out))  # noqa: S308 -- every line escaped above
