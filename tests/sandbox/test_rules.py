"""Scripted answers from a rule table: lists, JSON and YAML files, refusals, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from openai import BadRequestError, InternalServerError

from rowprompt.sandbox import APIError, Sandbox, SandboxConfig, expected_answer
from rowprompt.sandbox.model import load_rules

from .conftest import chat_line, client_for, read_lines, submit, wait_batch

MakeSandbox = Callable[..., Sandbox]
YAML_RULES = Path(__file__).resolve().parents[1] / "data" / "sandbox-rules.yaml"


def _ask(sb: Sandbox, text: str) -> str | None:
    answer = client_for(sb).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    return answer.choices[0].message.content


@pytest.fixture(params=["yaml", "json"])
def rules_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The same rule table as a YAML file and as a JSON file."""
    if request.param == "yaml":
        return YAML_RULES
    target = tmp_path / "rules.json"
    target.write_text(json.dumps(yaml.safe_load(YAML_RULES.read_text())["rules"]))
    return target


def test_rules_file(make_sandbox: MakeSandbox, rules_file: Path) -> None:
    sb = make_sandbox(rules_file=rules_file)
    assert _ask(sb, "Review: I love it") == "positive"
    assert _ask(sb, "Review: it broke") == "negative"
    assert _ask(sb, "capital of Peru?") == "The capital of Peru is unknown to the sandbox (Peru)."
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "no rule here"}]}
    assert _ask(sb, "no rule here") == expected_answer(body)
    assert (
        expected_answer(
            {**body, "messages": [{"role": "user", "content": "Review: great"}]}, rules=rules_file
        )
        == "positive"
    )


def test_refusal_and_scripted_errors(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(rules_file=YAML_RULES)
    client = client_for(sb)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "harmful request"}]
    )
    assert answer.choices[0].message.content is None
    assert answer.choices[0].message.refusal == "I can't help with that."
    with pytest.raises(InternalServerError):
        _ask(sb, "explode")
    with pytest.raises(BadRequestError) as info:
        _ask(sb, "invalid row")
    assert info.value.code == "scripted"
    with pytest.raises(APIError):
        expected_answer(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "invalid"}]},
            rules=YAML_RULES,
        )


def test_rules_apply_to_the_last_user_message_and_in_order(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(rules=[{"pattern": "a", "answer": "first"}, {"pattern": "a", "answer": "2"}])
    answer = client_for(sb).chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": "zzz"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "banana"}]},
        ],
    )
    assert answer.choices[0].message.content == "first"


def test_rules_in_batches(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(rules_file=YAML_RULES)
    client = client_for(sb)
    lines = [chat_line("p", "Review: great"), chat_line("e", "invalid"), chat_line("x", "boom")]
    batch = wait_batch(client, submit(client, lines).id)
    output = {line["custom_id"]: line for line in read_lines(client, batch.output_file_id)}
    errors = {line["custom_id"]: line for line in read_lines(client, batch.error_file_id)}
    assert output["p"]["response"]["body"]["choices"][0]["message"]["content"] == "positive"
    assert errors["e"]["response"]["status_code"] == 400
    assert errors["e"]["response"]["body"]["error"]["message"] == "Scripted rejection."
    assert "x" in output


@pytest.mark.parametrize(
    "bad",
    [[{"answer": "x"}], [{"pattern": "("}], [{"pattern": "x"}], [{"pattern": "x", "status": 200}]],
)
def test_bad_rules_are_refused(bad: list[dict[str, object]], tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(rules=bad)
    target = tmp_path / "rules.json"
    target.write_text(json.dumps(bad))
    with pytest.raises(ValueError):
        load_rules(target)
