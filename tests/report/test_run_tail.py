"""The end of `rowprompt run` and `rowprompt embed`: the report written and its path printed,
or, with --no-report, neither."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from rowprompt.cli import main
from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config

COMMANDS = {
    "run": ["--prompt", "Sentiment of: {{ review }}"],
    "embed": ["--column", "review", "--model", "text-embedding-3-small"],
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(fast_config()) as sb:
        yield sb


def _run(command: str, tmp_path: Path, sandbox: Sandbox, *extra: str) -> tuple[str, Path]:
    source = tmp_path / "in.csv"
    pd.DataFrame({"review": ["Great kettle", "Broke in a day", "It's fine"]}).to_csv(
        source, index=False
    )
    home = tmp_path / "home"
    args = [command, str(source), *COMMANDS[command], "--provider", "sandbox", "--base-url",
            sandbox.base_url, "--home", str(home), "--output", str(tmp_path / "out.csv"),
            *extra]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output, home


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_run_prints_the_report_it_wrote(command: str, tmp_path: Path, sandbox: Sandbox) -> None:
    output, home = _run(command, tmp_path, sandbox)
    (job,) = [p.stem for p in (home / "reports").glob("*.html")]
    lines = output.splitlines()
    report = home / "reports" / f"{job}.html"
    # The path is the run's last line, whole, so a script can take it.
    assert lines[-1] == f"report: {report}"
    html = report.read_text(encoding="utf-8")
    assert f"Job <code>{job}</code>" in html and '<svg class="chart"' in html
    assert stat.S_IMODE(report.stat().st_mode) == 0o600


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_report_writes_none(command: str, tmp_path: Path, sandbox: Sandbox) -> None:
    output, home = _run(command, tmp_path, sandbox, "--no-report")
    assert (home / "rowprompt.db").is_file()  # the run did happen
    assert "report:" not in output
    assert not (home / "reports").exists()
