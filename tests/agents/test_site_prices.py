"""The prices that feed the cost quota: the site's for the site's keys, the project's own only
for a key the team stored."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from fake_openai import API_KEY, MODEL, FakeOpenAI, Step

from agentide.agents.models import ModelProvider
from agentide.lib.env import env_prices
from agentide.quotas.models import UsageRecord
from agentide.sessions import execution
from agentide.sessions.models import Cell

pytestmark = pytest.mark.django_db
SITE_PRICES = {
    MODEL: (Decimal("2"), Decimal("0.5"), Decimal("8")),
    "*": (Decimal("100"), Decimal("100"), Decimal("100")),
}


@pytest.fixture
def site_key(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    settings.AGENTIDE_MODEL_KEY_VARS = ["OPENAI_API_KEY"]
    settings.AGENTIDE_MODEL_KEY_HOSTS = ["127.0.0.1"]
    settings.AGENTIDE_MODEL_PRICES = SITE_PRICES
    return settings


def free_provider(lab: Any, fake: FakeOpenAI, *, env: str) -> ModelProvider:
    """A provider whose admin set every price to zero."""
    provider = ModelProvider(
        project=lab, kind="responses", base_url=fake.url, model=MODEL, api_key_env=env
    )
    if not env:
        provider.set_api_key(API_KEY)
    provider.save()
    return provider


def test_a_site_key_is_charged_at_the_site_prices_whatever_the_project_says(
    personas: Any, lab: Any, fake: FakeOpenAI, agent_session: Any, site_key: Any, enqueued: Any
) -> None:
    free_provider(lab, fake, env="OPENAI_API_KEY")
    fake.add(Step(text="Hello.", usage={"input_tokens": 1000, "cached_tokens": 400,
                                        "output_tokens": 500}))
    cell = execution.submit_cell(
        personas.membership(personas.member), agent_session, Cell.Kind.PROMPT, "Say hello."
    )
    assert execution.run_next_cell(cell.session_id, worker="test") == cell
    cell.refresh_from_db()
    assert cell.status == Cell.Status.FINISHED, cell.error
    (record,) = UsageRecord.objects.filter(kind=UsageRecord.Kind.MODEL)
    # 600 uncached x $2 + 400 cached x $0.5 + 500 output x $8, per million tokens.
    assert record.cost == Decimal("0.005400")


def test_models_missing_from_the_table_take_its_default_and_own_keys_take_project_prices(
    lab: Any, fake: FakeOpenAI, site_key: Any
) -> None:
    provider = free_provider(lab, fake, env="OPENAI_API_KEY")
    provider.model = "some-other-model"
    assert provider.cost(input_tokens=10_000, cached_tokens=0, output_tokens=0) == Decimal("1")
    own = ModelProvider(
        project=lab, model=MODEL, price_input=Decimal("0"), price_output=Decimal("0")
    )
    own.set_api_key("sk-team")
    assert own.cost(input_tokens=10_000, cached_tokens=0, output_tokens=10_000) == 0


def test_the_settings_page_says_the_site_prices_apply(
    client: Any, personas: Any, lab: Any, fake: FakeOpenAI, site_key: Any
) -> None:
    free_provider(lab, fake, env="OPENAI_API_KEY")
    client.force_login(personas.owner)
    page = client.get(reverse("provider_settings", args=["acme", "lab"])).content.decode()
    assert "the site's prices for the site's key: $2 input" in page


def test_the_price_table_is_read_from_the_environment_and_bad_entries_fail_loudly() -> None:
    table = env_prices("P", "", environ={"P": "gpt-x=1.5/0.1/6, *=20/2/80"})
    assert table == {
        "gpt-x": (Decimal("1.5"), Decimal("0.1"), Decimal("6")),
        "*": (Decimal("20"), Decimal("2"), Decimal("80")),
    }
    for bad in ("gpt-x=1/2", "gpt-x=1/2/x,*=1/1/1", "gpt-x=1/-2/3,*=1/1/1", "gpt-x=1/2/3"):
        with pytest.raises(ImproperlyConfigured, match="P"):
            env_prices("P", "", environ={"P": bad})
