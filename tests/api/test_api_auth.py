"""Every /v1/ call is authenticated by a bearer key and answers errors in OpenAI's shape,
through real HTTP against Daphne with the openai SDK as the client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import requests

from tests.support import ARTIFACTS, child_env, free_port, start_daphne, test_database_url


def call(method: str, url: str, secret: str | None = None, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return requests.request(method, url, headers=headers, timeout=60, **kwargs)


def test_a_request_without_a_key_is_refused(daphne_server: Any) -> None:
    response = call("GET", f"{daphne_server.url}/v1/containers")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "missing_api_key"
    assert "Authorization: Bearer" in error["message"]


def test_a_bad_key_raises_the_sdks_authentication_error(sdk: Callable[..., Any],
                                                        api_key: str) -> None:
    for bad in ("sk-not-ours", api_key[:-2] + "xx", "aide-000000000000-secret"):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(bad).containers.list()
        assert caught.value.code == "invalid_api_key"
        assert "Incorrect API key" in caught.value.message


def test_a_revoked_key_answers_401(sdk: Callable[..., Any], make_key: Any,
                                   personas: Any) -> None:
    from agentide.api.keys import revoke_key

    key, secret = make_key()
    revoke_key(key, by=personas.owner)
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        sdk(secret).containers.list()


def test_a_key_whose_creator_may_no_longer_write_answers_403(
    sdk: Callable[..., Any], make_key: Any, personas: Any
) -> None:
    from agentide.accounts.models import Role

    _key, secret = make_key(user=personas.admin)
    personas.team.memberships.filter(user=personas.admin).update(role=Role.REVIEWER)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(secret).containers.list()
    assert caught.value.code == "key_creator_not_allowed"

    personas.team.memberships.filter(user=personas.admin).delete()
    with pytest.raises(openai.PermissionDeniedError):
        sdk(secret).containers.list()


def test_unknown_paths_and_methods_answer_in_openais_shape(daphne_server: Any,
                                                           api_key: str) -> None:
    missing = call("GET", f"{daphne_server.url}/v1/nothing/here", api_key)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert "/v1/nothing/here" in missing.json()["error"]["message"]


def test_a_valid_key_records_its_last_use(daphne_server: Any, make_key: Any) -> None:
    key, secret = make_key()
    assert key.last_used_at is None
    call("GET", f"{daphne_server.url}/v1/nothing", secret)
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_post_needs_no_csrf_token(daphne_server: Any, api_key: str) -> None:
    response = call("POST", f"{daphne_server.url}/v1/nothing", api_key, json={})
    assert response.status_code == 404  # not 403 from the CSRF middleware
    assert response.json()["error"]["code"] == "not_found"


@pytest.fixture
def limited_server(transactional_db: None) -> Iterator[str]:
    """Daphne with a per-key limit of 3 requests a minute."""
    port = free_port()
    process = start_daphne(
        port,
        child_env(database_url=test_database_url(), AGENTIDE_API_RATE_PER_MINUTE="3"),
        log=ARTIFACTS / f"daphne-{port}.log",
    )
    yield f"http://127.0.0.1:{port}"
    process.stop()


def test_a_key_past_its_rate_limit_gets_429_with_retry_after(limited_server: str,
                                                             make_key: Any) -> None:
    _key, secret = make_key()
    _other, other_secret = make_key(name="other")
    url = f"{limited_server}/v1/nothing"
    statuses = [call("GET", url, secret).status_code for _ in range(3)]
    assert statuses == [404, 404, 404]
    refused = call("GET", url, secret)
    # The minute may have turned between the requests: then the window starts again.
    while refused.status_code != 429:
        refused = call("GET", url, secret)
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_exceeded"
    assert "3 requests per minute" in error["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    # Another key has its own count.
    assert call("GET", url, other_secret).status_code == 404


def test_last_use_is_written_at_most_once_a_minute(make_key: Any) -> None:
    import datetime as dt

    from agentide.api.auth import mark_used
    from agentide.api.models import ApiKey

    key, _secret = make_key()
    mark_used(key)
    first = ApiKey.objects.get(pk=key.pk).last_used_at
    assert first is not None
    mark_used(ApiKey.objects.get(pk=key.pk))
    assert ApiKey.objects.get(pk=key.pk).last_used_at == first
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=first - dt.timedelta(minutes=2))
    mark_used(ApiKey.objects.get(pk=key.pk))
    assert ApiKey.objects.get(pk=key.pk).last_used_at > first
