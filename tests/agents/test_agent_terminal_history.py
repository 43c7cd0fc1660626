"""The agent's input carries the shared terminal's activity since its previous turn, bounded
(the fake model over HTTP, the real event log; the terminal events as the pump writes them)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Step

from agentide.events import log as event_log
from agentide.events import registry
from agentide.sessions import execution
from agentide.sessions.models import Cell

pytestmark = pytest.mark.usefixtures("transactional_db", "enqueued")

PROMPT = "member@sandbox:/workspace$ "


def ask(personas: Any, session: Any, text: str) -> Cell:
    cell = execution.submit_cell(personas.membership(personas.member), session, "prompt", text)
    assert execution.run_next_cell(session.pk, worker="test") == cell
    cell.refresh_from_db()
    assert cell.status == Cell.Status.FINISHED, cell.error
    return cell


def typed(session: Any, user: Any, line: str, output: str) -> None:
    event_log.append_event(session.pk, registry.TERMINAL_OUTPUT, {"text": output})
    event_log.append_event(session.pk, registry.TERMINAL_INPUT, {"line": PROMPT + line},
                          actor=user)


def terminal_message(body: dict[str, Any]) -> str:
    texts = [json.dumps(item) for item in body["input"]]
    found = [t for t in texts if "shared terminal since the previous turn" in t]
    assert len(found) <= 1
    return str(json.loads(found[0])["content"]) if found else ""


def test_the_next_turn_sees_what_was_typed_and_printed_in_the_terminal_bounded(
    personas: Any, agent_session: Any, provider: Any, fake: FakeOpenAI, settings: Any
) -> None:
    settings.AGENTIDE_AGENT_OUTPUT_CHARS = 2000
    fake.add(Step(text="Hello."))
    ask(personas, agent_session, "Hi.")
    assert terminal_message(fake.requests[-1].body) == ""  # nothing happened there yet

    event_log.append_event(agent_session.pk, registry.TERMINAL_OPENED,
                          {"terminal_id": "t", "rows": 24, "cols": 80})
    typed(agent_session, personas.owner, "yes early-junk | head -1000", PROMPT)
    event_log.append_event(agent_session.pk, registry.TERMINAL_OUTPUT,
                          {"text": "early-junk\r\n" * 1000})
    typed(agent_session, personas.owner, "python3 -c 'print(6*7)'",
          PROMPT + "python3 -c 'print(6*7)'\r\n")
    event_log.append_event(agent_session.pk, registry.TERMINAL_OUTPUT,
                          {"text": "\x1b[1m42\x1b[0m\r\n" + PROMPT})
    fake.add(Step(text="You ran python3 and it printed 42."))
    ask(personas, agent_session, "What did I just run in the terminal?")

    body = fake.requests[-1].body
    assert body.get("previous_response_id")  # only what came after the first turn is sent
    text = terminal_message(body)
    assert f"{personas.owner.username}: {PROMPT}python3 -c 'print(6*7)'" in text
    assert f"{personas.owner.username}: {PROMPT}yes early-junk | head -1000" in text
    assert "\n42\n" in text and "\x1b" not in text
    assert "[... earlier output omitted ...]" in text
    assert text.count("early-junk") < 2000 // len("early-junk\n") + 3  # bounded
    assert len(text) < 2000 + 2000 // 2 + 400
    # The message comes right before the prompt it answers.
    sent = json.dumps(body["input"])
    assert sent.index("shared terminal since the previous turn") < sent.index(
        "What did I just run in the terminal?")

    # The next turn carries only what happened since this one.
    typed(agent_session, personas.member, "echo later-$((1+1))", "echo later-2\r\nlater-2\r\n")
    fake.add(Step(text="later-2"))
    ask(personas, agent_session, "And now?")
    text = terminal_message(fake.requests[-1].body)
    assert f"{personas.member.username}: {PROMPT}echo later-$((1+1))" in text
    assert "python3" not in text and "early-junk" not in text
