"""Server time, HTML size and queries of a 1,000-cell transcript page (not part of the suite;
its name keeps pytest from collecting it). Run it by name:

    /work/bin/wtest tests/transcripts/measure_page.py -q -s

It prints one line per request: the median of 5 renders through Django's test client."""

from __future__ import annotations

import re
import statistics
import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from agentide.sessions import services as sessions
from tests.transcripts.paging import long_session

pytestmark = pytest.mark.django_db

CELLS = 1000


def measure(client: Any, url: str) -> tuple[float, int, int, str]:
    times = []
    for _ in range(5):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - started)
        assert response.status_code == 200
    body = response.content.decode()
    return statistics.median(times), len(response.content), len(queries), body


def test_measure_a_1000_cell_transcript_page(
    client: Any, personas: Any, project: Any, no_tasks: list[int]
) -> None:
    session = sessions.create_session(personas.membership(personas.member), project, "Long")
    long_session(personas, session, CELLS)
    client.force_login(personas.reviewer)
    url = reverse("transcript_detail", args=[session.pk])
    seconds, size, queries, body = measure(client, url)
    blocks = body.count('<article class="tr-cell')
    print(f"\n{CELLS} cells, {session.last_seq} events: page {seconds * 1000:.0f} ms server, "
          f"{size / 1024:.0f} KiB HTML, {queries} queries, "
          f"{blocks} blocks rendered")
    later = re.search(r'id="tr-later" hx-get="([^"]+)"', body)
    if later:
        seconds, size, queries, body = measure(client, later.group(1).replace("&amp;", "&"))
        print(f"next page: {seconds * 1000:.0f} ms server, {size / 1024:.0f} KiB HTML, "
              f"{queries} queries")
