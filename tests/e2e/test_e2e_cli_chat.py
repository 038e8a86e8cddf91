"""`agentmesh chat` against the whole mesh: one turn for a script (the answer, the
routing line, the events as JSON), a message routed without naming an agent, and the
interactive form in a pseudo-terminal: turns that continue one conversation, an
interrupt answered at the prompt, /exit."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import uuid

import pytest

from e2e.test_e2e_cli import CLI, RUN_TIMEOUT_S, agentmesh, cli_env

__all__ = ["cli_env"]  # the fixture, shared with the other CLI tests

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _session() -> str:
    return f"chat-{uuid.uuid4().hex[:10]}"


def test_one_turn_prints_the_routing_line_and_the_answer(cli_env: dict[str, str]) -> None:
    session = _session()
    run = agentmesh(
        cli_env, "chat", "--session", session, "--agent", "echo", "--message", "hello chat"
    )
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("→ agents/echo (EXPLICIT)"), lines
    assert lines[-1] == "agents/echo: hello chat", lines
    assert "\x1b[" not in run.out

    # The same session goes on; --json prints every event of the turn, numbered on.
    as_json = agentmesh(
        cli_env, "chat", "--session", session, "--agent", "echo", "-m", "again", "--json"
    )
    assert as_json.code == 0, as_json.err
    events = as_json.json_lines()
    assert "routing" in events[0]
    assert events[0]["routing"]["agent"] == "agents/echo"
    assert events[0]["session"] == f"sessions/{session}"
    assert events[-1]["final"]["parts"] == [{"text": "again"}]
    relayed = [e["agentEvent"] for e in events if "agentEvent" in e]
    assert relayed[-1]["final"]["output"]["turns"] == 2
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(events)))
    assert sequences[0] > 1  # after the first turn's events


def test_without_an_agent_the_conductor_routes_arithmetic_to_the_calculator(
    cli_env: dict[str, str],
) -> None:
    # The offline calculator has no model to read prose: the expression goes as its
    # structured input, and the text is what the Conductor routes on.
    run = agentmesh(
        cli_env,
        "chat",
        "--verbose",
        "--message",
        "what is 17 * 23",
        "--input",
        '{"expression": "17 * 23"}',
    )
    assert run.code == 0, run.err
    assert run.err.startswith("session: sessions/chat-"), run.err
    lines = run.out.splitlines()
    assert re.match(r"→ agents/calculator \((SIMILARITY|SUPERVISOR)\): \S", lines[0]), lines
    # --verbose: the candidates with their scores, the best first.
    scored = [line.split() for line in lines[1:] if re.match(r"  [01]\.\d{3}  agents/", line)]
    assert scored[0][1] == "agents/calculator", lines
    assert '  tool calculator {"expression": "17 * 23"}' in lines, lines
    assert "agents/calculator: 17 * 23 = 391" in lines, lines


def test_a_script_answers_an_interrupt_with_its_id(cli_env: dict[str, str]) -> None:
    session = _session()
    paused = agentmesh(
        cli_env,
        "chat",
        "--session",
        session,
        "--agent",
        "approval",
        "--input",
        '{"action": "delete the report"}',
        "-m",
        "delete the report",
    )
    assert paused.code == 0, paused.err
    asks, payload = paused.out.splitlines()[-2:]
    assert asks == "agents/approval asks: Approve: delete the report?"
    assert json.loads(payload) == {
        "question": "Approve: delete the report?",
        "action": "delete the report",
        "answers": ["yes", "no"],
    }
    # stderr names the interrupt and the command that answers it.
    found = re.search(rf"agentmesh chat --session {session} --interrupt (\S+)", paused.err)
    assert found, paused.err
    interrupt_id = found.group(1)

    # A message while the turn waits is refused, with the reason.
    refused = agentmesh(cli_env, "chat", "--session", session, "-m", "hello?")
    assert refused.code == 1
    assert "FAILED_PRECONDITION" in refused.err
    assert "TURN_PAUSED" in refused.err

    answered = agentmesh(
        cli_env, "chat", "--session", session, "--interrupt", interrupt_id, "--answer", "no"
    )
    assert answered.code == 0, answered.err
    lines = answered.out.splitlines()
    assert lines[0].startswith("→ agents/approval (EXPLICIT): continues turn "), lines
    assert lines[-1] == "agents/approval: Not approved: delete the report. Nothing was done."

    usage = agentmesh(cli_env, "chat", "--answer", "yes")
    assert usage.code == 2
    assert "--interrupt" in usage.err


class Terminal:
    """The command in a pseudo-terminal, as a person at a keyboard runs it."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command, with the terminal as its stdio
            os.execve(CLI, [CLI, *args], env)
        self.screen = ""
        self.read_to = 0

    def _more(self) -> bool:
        ready, _, _ = select.select([self.fd], [], [], RUN_TIMEOUT_S)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # the command ended and closed the terminal
            return False
        if not chunk:
            return False
        self.screen += ANSI.sub("", chunk.decode(errors="replace")).replace("\r\n", "\n")
        return True

    def expect(self, text: str) -> str:
        """Everything shown from the last expectation up to and including ``text``."""
        while text not in self.screen[self.read_to :]:
            assert self._more(), f"never showed {text!r}; the screen:\n{self.screen}"
        end = self.screen.index(text, self.read_to) + len(text)
        shown, self.read_to = self.screen[self.read_to : end], end
        return shown

    def type(self, line: str) -> None:
        os.write(self.fd, f"{line}\n".encode())

    def exit_code(self) -> int:
        while self._more():
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


@pytest.fixture
def terminal_env(cli_env: dict[str, str]) -> dict[str, str]:
    return cli_env | {"TERM": "xterm", "NO_COLOR": "1"}


def test_an_interactive_chat_continues_the_conversation_and_answers_an_interrupt(
    terminal_env: dict[str, str],
) -> None:
    session = _session()
    term = Terminal(terminal_env, "chat", "--session", session, "--agent", "echo", "--verbose")
    term.expect("you> ")
    term.type("hello terminal")
    first = term.expect("you> ")
    assert "→ agents/echo (EXPLICIT)" in first
    assert "agents/echo: hello terminal" in first
    assert '"turns": 1' in first

    term.type("and again")
    second = term.expect("you> ")
    assert "agents/echo: and again" in second
    assert '"turns": 2' in second  # the same thread: the conversation continues

    # The approval agent pauses for a human; the answer typed at the prompt resumes it.
    term.type("/agent approval")
    term.expect("talking to agents/approval")
    term.type('/input {"action": "refund order 1234"}')
    term.expect("you> ")
    term.type("please refund order 1234")
    paused = term.expect("answer> ")
    assert "→ agents/approval (EXPLICIT)" in paused
    assert "agents/approval asks: Approve: refund order 1234?" in paused
    assert '"answers": ["yes", "no"]' in paused
    term.type("yes")
    resumed = term.expect("you> ")
    assert "agents/approval: Approved: refund order 1234. Done." in resumed

    term.type("/exit")
    assert term.exit_code() == 0

    history = agentmesh(terminal_env, "sessions", "history", session)
    assert history.code == 0, history.err
    assert history.out.splitlines()[-1].endswith(
        "assistant (agents/approval): Approved: refund order 1234. Done."
    ), history.out
