"""Comments on events: who may write them, resolving, and where they appear."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from agentide.events.models import Event
from agentide.transcripts.models import Annotation

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("who", ["owner", "member", "reviewer"])
def test_members_and_reviewers_comment_on_any_event(
    client: Any, personas: Any, rich_session: Any, who: str
) -> None:
    target = Event.objects.get(session=rich_session, type="agent.tool_call")
    client.force_login(getattr(personas, who))
    url = reverse("annotation_create", args=[rich_session.pk])
    response = client.post(url, {"seq": target.seq, "body": "Check <this> call"})
    assert response.status_code == 302
    assert response["Location"].endswith(f"#e-{target.seq}")
    comment = Annotation.objects.filter(session=rich_session).latest("seq")
    assert comment.target_seq == target.seq and comment.author == getattr(personas, who)
    event = Event.objects.get(session=rich_session, seq=comment.seq)
    assert event.type == "annotation.added" and event.cell_id == target.cell_id
    assert event.payload == {"target_seq": target.seq, "body": "Check <this> call"}
    body = client.get(reverse("transcript_detail", args=[rich_session.pk])).content.decode()
    assert "Check &lt;this&gt; call" in body

    resolve = reverse("annotation_resolve", args=[rich_session.pk, comment.seq])
    assert client.post(resolve, {"resolved": "1"}).status_code == 302
    comment.refresh_from_db()
    assert comment.resolved
    assert Event.objects.filter(session=rich_session, type="annotation.resolved").count() == 2
    # Resolving again changes nothing.
    client.post(resolve, {"resolved": "1"})
    assert Event.objects.filter(session=rich_session, type="annotation.resolved").count() == 2
    client.post(resolve, {"resolved": "0"})
    comment.refresh_from_db()
    assert not comment.resolved


def test_comments_are_refused_when_empty_or_on_missing_events(
    client: Any, personas: Any, rich_session: Any
) -> None:
    client.force_login(personas.reviewer)
    url = reverse("annotation_create", args=[rich_session.pk])
    count = Annotation.objects.count()
    response = client.post(url, {"seq": 1, "body": "   "}, follow=True)
    assert "Write a comment first." in response.content.decode()
    assert client.post(url, {"seq": 9999, "body": "x"}).status_code == 404
    assert client.post(url, {"seq": "x", "body": "x"}).status_code == 404
    assert client.get(url).status_code == 405
    assert Annotation.objects.count() == count


def test_outsiders_cannot_comment_or_resolve(client: Any, personas: Any, rich_session: Any) -> None:
    comment = Annotation.objects.get(session=rich_session)
    client.force_login(personas.outsider)
    assert (
        client.post(
            reverse("annotation_create", args=[rich_session.pk]), {"seq": 1, "body": "x"}
        ).status_code
        == 404
    )
    assert (
        client.post(
            reverse("annotation_resolve", args=[rich_session.pk, comment.seq]), {"resolved": "0"}
        ).status_code
        == 404
    )


def test_the_comment_form_opens_under_the_chosen_event(
    client: Any, personas: Any, rich_session: Any
) -> None:
    client.force_login(personas.reviewer)
    url = reverse("transcript_detail", args=[rich_session.pk])
    body = client.get(url, {"comment": 2}).content.decode()
    assert 'id="comment-form"' in body and 'name="seq" value="2"' in body
    assert "csrfmiddlewaretoken" in body


def test_comment_posts_need_csrf(personas: Any, rich_session: Any) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.reviewer)
    response = client.post(
        reverse("annotation_create", args=[rich_session.pk]), {"seq": 1, "body": "x"}
    )
    assert response.status_code == 403


def test_output_chunks_can_be_commented(client: Any, personas: Any, rich_session: Any) -> None:
    chunk = Event.objects.filter(session=rich_session, type="cell.output").first()
    client.force_login(personas.reviewer)
    url = reverse("transcript_detail", args=[rich_session.pk])
    body = client.get(url, {"comment": chunk.seq}).content.decode()
    assert f'name="seq" value="{chunk.seq}"' in body
    client.post(
        reverse("annotation_create", args=[rich_session.pk]),
        {"seq": chunk.seq, "body": "this line"},
    )
    assert "this line" in client.get(url).content.decode()
