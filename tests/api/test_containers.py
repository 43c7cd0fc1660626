"""/v1/containers through the real openai SDK against Daphne: each container is a session of
the key's project, scoped to it, with quotas and expiry applied."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import openai
import pytest
import requests
from django.utils import timezone

from agentide.api.models import ApiContainer
from agentide.events import registry
from agentide.sessions.models import Session

Sdk = Callable[[str], openai.OpenAI]


def test_create_list_retrieve_delete(sdk: Sdk, make_key: Any, project: Any) -> None:
    key, secret = make_key(name="nightly build")
    client = sdk(secret)

    made = client.containers.create(
        name="build box", expires_after={"anchor": "last_active_at", "minutes": 5},
        memory_limit="1g",
    )
    assert made.id.startswith("cntr_") and len(made.id) > 40
    assert made.name == "build box"
    assert made.status == "running"
    assert made.object == "container"
    assert made.expires_after is not None and made.expires_after.minutes == 5
    assert made.expires_after.anchor == "last_active_at"
    assert made.memory_limit == "1g"
    assert made.last_active_at is not None and made.created_at > 0

    # It is a session of the key's project, labelled with the key's name.
    session = ApiContainer.objects.get(public_id=made.id).session
    assert session.project == project
    assert session.api_key_name == "nightly build"
    assert session.title == "build box"
    assert session.created_by == key.created_by

    others = [client.containers.create(name=f"box {n}").id for n in range(2)]
    assert client.containers.create(name="default").expires_after.minutes == 20

    page = client.containers.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    everything = [c.id for c in client.containers.list(limit=2)]  # the SDK pages on by itself
    assert len(everything) == 4 and len(set(everything)) == 4
    assert [c.id for c in client.containers.list(order="asc")][:3] == [made.id, *others]
    assert [c.id for c in client.containers.list(name="box 1")] == [others[1]]

    assert client.containers.retrieve(made.id).name == "build box"
    client.containers.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.containers.retrieve(made.id)
    assert made.id not in [c.id for c in client.containers.list()]
    # The session stays, ended, with its transcript.
    session.refresh_from_db()
    assert session.status == Session.Status.ENDED


def test_another_teams_or_projects_container_is_not_found(
    sdk: Sdk, make_key: Any, personas: Any
) -> None:
    from agentide.api.keys import create_key
    from agentide.projects.models import Project

    _key, secret = make_key()
    mine = sdk(secret).containers.create(name="mine").id

    theirs = Project.objects.create(team=personas.other_team, name="Theirs", slug="theirs")
    _other, their_secret = create_key(personas.outsider, project=theirs, name="theirs")
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(their_secret).containers.retrieve(mine)
    assert caught.value.code == "not_found"
    with pytest.raises(openai.NotFoundError):
        sdk(their_secret).containers.delete(mine)
    assert sdk(their_secret).containers.list().data == []

    sibling = Project.objects.create(team=personas.team, name="Sibling", slug="sibling")
    _s, sibling_secret = make_key(project_=sibling)
    with pytest.raises(openai.NotFoundError):
        sdk(sibling_secret).containers.retrieve(mine)
    with pytest.raises(openai.NotFoundError):
        sdk(secret).containers.retrieve("cntr_" + "0" * 40)


def test_bad_requests_say_what_is_wrong(sdk: Sdk, api_key: str, project: Any) -> None:
    client = sdk(api_key)
    project.sandbox_memory_mb = 1024
    project.save()
    with pytest.raises(openai.BadRequestError) as caught:
        client.containers.create(name="big", memory_limit="4g")
    assert caught.value.param == "memory_limit"
    assert "4g (4096 MiB)" in caught.value.message and "1024 MiB" in caught.value.message

    with pytest.raises(openai.BadRequestError) as caught:
        client.containers.create(name="files", file_ids=["file-abc"])
    assert caught.value.param == "file_ids" and "not supported" in caught.value.message

    with pytest.raises(openai.BadRequestError, match="network"):
        client.containers.create(
            name="net", network_policy={"type": "allowlist", "allowed_domains": ["x.test"]}
        )
    with pytest.raises(openai.BadRequestError, match="minutes"):
        client.containers.create(name="x", expires_after={"anchor": "last_active_at",
                                                          "minutes": 0})
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.containers.list(limit=101)
    with pytest.raises(openai.BadRequestError) as caught:
        client.containers.create(name="")
    assert caught.value.param == "name"
    assert Session.objects.count() == 0  # nothing was made


def test_a_quota_refusal_is_a_rate_limit_error_with_its_message(
    sdk: Sdk, api_key: str, set_quota: Any
) -> None:
    set_quota(max_sessions=1)
    client = sdk(api_key)
    client.containers.create(name="one")
    with pytest.raises(openai.RateLimitError) as caught:
        client.containers.create(name="two")
    assert "Quota exceeded" in caught.value.message
    assert "1 active sessions" in caught.value.message
    assert caught.value.code == "max_sessions"
    assert caught.value.response.headers["x-should-retry"] == "false"  # the SDK won't retry


def test_wrong_methods_answer_405(daphne_server: Any, api_key: str) -> None:
    response = requests.put(f"{daphne_server.url}/v1/containers", timeout=60,
                            headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_idle_containers_expire(sdk: Sdk, api_key: str) -> None:
    from agentide.api.containers import expire_idle_containers

    client = sdk(api_key)
    idle = client.containers.create(
        name="idle", expires_after={"anchor": "last_active_at", "minutes": 1}
    )
    fresh = client.containers.create(name="fresh")
    ApiContainer.objects.filter(public_id=idle.id).update(
        last_active_at=timezone.now() - dt.timedelta(minutes=2)
    )
    assert expire_idle_containers() == 1

    assert client.containers.retrieve(idle.id).status == "expired"
    assert client.containers.retrieve(fresh.id).status == "running"
    session = ApiContainer.objects.get(public_id=idle.id).session
    assert session.status == Session.Status.ENDED
    ended = session.events.filter(type=registry.SESSION_ENDED).get()
    assert "expired after 1 minutes" in ended.payload["message"]

    with pytest.raises(openai.ConflictError) as caught:
        client.containers.files.create(idle.id, file=("a.txt", b"a"))
    assert caught.value.code == "container_expired"
    assert "Create a new container" in caught.value.message


def test_a_container_past_due_expires_when_used(sdk: Sdk, api_key: str) -> None:
    client = sdk(api_key)
    box = client.containers.create(name="late",
                                   expires_after={"anchor": "last_active_at", "minutes": 1})
    ApiContainer.objects.filter(public_id=box.id).update(
        last_active_at=timezone.now() - dt.timedelta(minutes=5)
    )
    with pytest.raises(openai.ConflictError):
        client.containers.files.create(box.id, file=("a.txt", b"a"))
    assert client.containers.retrieve(box.id).status == "expired"


def test_the_beat_runs_the_sweep(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["api-expire-idle-containers"]
    assert entry["task"] == "agentide.api.tasks.expire_idle_containers"


def test_a_container_shows_as_an_api_session_with_the_keys_name(
    sdk: Sdk, make_key: Any, personas: Any
) -> None:
    from django.test import Client

    _key, secret = make_key(name="nightly <build>")
    box = sdk(secret).containers.create(name="from the api")
    session = ApiContainer.objects.get(public_id=box.id).session
    client = Client()
    client.force_login(personas.reviewer)
    badge = "API · nightly &lt;build&gt;"
    listing = client.get("/t/acme/p/demo/").content.decode()
    assert "from the api" in listing and badge in listing
    assert badge in client.get(f"/s/{session.pk}/").content.decode()


def test_a_container_whose_session_an_operator_ended_is_expired(
    sdk: Sdk, api_key: str
) -> None:
    from agentide.sessions.services import end_session

    client = sdk(api_key)
    box = client.containers.create(name="ended by an operator")
    end_session(ApiContainer.objects.get(public_id=box.id).session)
    with pytest.raises(openai.ConflictError):
        client.containers.files.create(box.id, file=("a.txt", b"a"))
    assert client.containers.retrieve(box.id).status == "expired"


def test_the_sweep_leaves_a_container_touched_since_it_was_found_idle(caller: Any) -> None:
    from agentide.api.containers import create_container, expire_container, touch_container

    container = create_container(caller, name="raced", expires_after_minutes=1)
    seen = ApiContainer.objects.get(pk=container.pk)  # the sweep's copy, read before the touch
    touch_container(container)
    assert expire_container(seen) is False
    container.refresh_from_db()
    assert container.status == "running"


def test_the_async_client_works_too(daphne_server: Any, api_key: str) -> None:
    import asyncio

    async def run() -> tuple[str, list[str]]:
        client = openai.AsyncOpenAI(base_url=f"{daphne_server.url}/v1", api_key=api_key,
                                    max_retries=0)
        made = await client.containers.create(name="async")
        listed = [c.id async for c in client.containers.list()]
        await client.close()
        return made.id, listed

    made, listed = asyncio.run(run())
    assert listed == [made]


def test_use_container_refuses_an_expired_one_and_touches_a_running_one(caller: Any) -> None:
    from agentide.api.containers import create_container, use_container
    from agentide.api.errors import ApiError

    running = create_container(caller, name="running")
    before = running.last_active_at
    assert use_container(caller, running.public_id).last_active_at > before

    late = create_container(caller, name="late", expires_after_minutes=1)
    ApiContainer.objects.filter(pk=late.pk).update(
        last_active_at=timezone.now() - dt.timedelta(minutes=3)
    )
    with pytest.raises(ApiError) as caught:
        use_container(caller, late.public_id)
    assert caught.value.status == 409
    late.refresh_from_db()
    assert late.status == "expired"
