"""Geometry of the server-rendered SVG bar charts on the usage page (no script, no CDN)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from agentide.quotas.services import Usage

WIDTH = 620
HEIGHT = 120
GAP = 2


@dataclass
class Bar:
    x: int
    y: int
    width: int
    height: int
    day: dt.date
    title: str


@dataclass
class Chart:
    title: str
    bars: list[Bar]
    peak: str
    width: int = WIDTH
    height: int = HEIGHT


def _bars(
    days: list[tuple[dt.date, Usage]],
    value: Callable[[Usage], Decimal],
    fmt: Callable[[Decimal], str],
) -> tuple[list[Bar], Decimal]:
    values = [value(usage) for _, usage in days]
    peak = max(values, default=Decimal(0))
    slot = WIDTH // max(len(days), 1)
    bars = []
    for index, ((day, _), amount) in enumerate(zip(days, values, strict=True)):
        height = int(amount * (HEIGHT - 4) / peak) if peak > 0 else 0
        if amount > 0:
            height = max(height, 1)
        bars.append(
            Bar(
                x=index * slot,
                y=HEIGHT - height,
                width=max(slot - GAP, 1),
                height=height,
                day=day,
                title=f"{day:%b %d}: {fmt(amount)}",
            )
        )
    return bars, peak


def daily_chart(days: list[tuple[dt.date, Usage]]) -> list[Chart]:
    """Three charts of the month so far, one bar per day: sandbox hours, tokens, cost."""
    specs: list[tuple[str, Callable[[Usage], Decimal], Callable[[Decimal], str]]] = [
        ("Sandbox hours", lambda u: Decimal(u.sandbox_seconds) / 3600, lambda v: f"{v:.2f} h"),
        ("Tokens", lambda u: Decimal(u.tokens), lambda v: f"{int(v):,} tokens"),
        ("Model cost", lambda u: Decimal(u.cost), lambda v: f"${v:,.2f}"),
    ]
    charts = []
    for title, value, fmt in specs:
        bars, peak = _bars(days, value, fmt)
        charts.append(Chart(title=title, bars=bars, peak=fmt(peak)))
    return charts
