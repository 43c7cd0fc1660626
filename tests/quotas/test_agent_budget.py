"""A running agent turn that crosses its token budget stops cleanly at the next step:
the fake model over real HTTP with the real openai SDK, the real sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from agentide.agents import services as agents
from agentide.events.models import Event
from agentide.quotas import services as quotas
from agentide.quotas.models import UsageRecord
from agentide.sessions import execution
from agentide.sessions.models import Cell
from tests.agents.fake_openai import API_KEY, MODEL, FakeOpenAI, Step

pytestmark = pytest.mark.usefixtures("transactional_db")


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def provider(project: Any, fake: FakeOpenAI) -> Any:
    from agentide.agents.models import ModelProvider

    provider = ModelProvider(project=project, kind="responses", base_url=fake.url, model=MODEL,
                             price_input=Decimal("2"), price_output=Decimal("8"))
    provider.set_api_key(API_KEY)
    provider.save()
    return provider


@pytest.fixture
def agent_session(session: Any) -> Iterator[Any]:
    from agentide.sandboxes import services as sandboxes

    yield session
    sandboxes.destroy_sandbox(session)


@pytest.fixture(autouse=True)
def no_enqueue(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentide.sessions import execution

    monkeypatch.setattr(execution, "wake_scheduler", lambda session_id: None)


def test_a_turn_crossing_its_token_budget_stops_at_the_next_step(
    personas, agent_session, provider, fake, set_quota
):
    set_quota(tokens_per_month=1000)
    usage = {"input_tokens": 900, "output_tokens": 300}
    fake.add(Step(text="Listing.", calls=[{"commands": ["echo step-one"]}], usage=usage),
             Step(text="Never asked for.", usage=usage))
    cell = execution.submit_cell(personas.membership(personas.member), agent_session,
                                Cell.Kind.PROMPT, "List the files, then more.")
    assert execution.run_next_cell(agent_session.pk, worker="test") == cell
    cell.refresh_from_db()

    assert cell.status == Cell.Status.FAILED
    assert "Monthly limit reached: team Acme has used 1,200 of 1,000 tokens" in cell.error
    # The first step ran to its end (its command and output are in the log)...
    (result,) = Event.objects.filter(cell=cell, type=agents.TOOL_RESULT).values_list(
        "payload", flat=True)
    assert result["outputs"][0]["exit_code"] == 0
    # ...and the second model call was never made.
    assert Event.objects.filter(cell=cell, type=agents.REQUEST).count() == 1
    (finished,) = Event.objects.filter(cell=cell, type=agents.TURN_FINISHED).values_list(
        "payload", flat=True)
    assert finished["reason"] == "quota"
    assert Event.objects.filter(session=agent_session, type="quota.exceeded").count() == 1
    # The call is in the ledger, charged to the prompt's author at the project's prices.
    (record,) = UsageRecord.objects.filter(kind=UsageRecord.Kind.MODEL)
    assert (record.user, record.tokens, record.cost) == (
        personas.member, 1200, Decimal("0.004200"))
    assert quotas.usage_in(personas.team.pk).tokens == 1200

    # The next prompt is refused before it is queued.
    with pytest.raises(quotas.QuotaExceeded):
        execution.submit_cell(personas.membership(personas.member), agent_session,
                             Cell.Kind.PROMPT, "One more?")
