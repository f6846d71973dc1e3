"""Secrets: a canary API key never reaches the ledger, logs, outputs, messages or reports."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from rowprompt.cli import main
from rowprompt.sandbox import FaultConfig, Sandbox
from rowprompt.sandbox.server import exposure_warning
from tests.helpers import RP, fast_config
from tests.reliability.harness import CANARY, PROMPT, clean_env, ledger_query, make_table


def _files_with(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _canary_args(src: Path, home: Path, out: Path, base_url: str, mode: str) -> list[str]:
    return [
        "run",
        str(src),
        "--prompt",
        PROMPT,
        "--provider",
        "openai",
        "--base-url",
        base_url,
        "--mode",
        mode,
        "--home",
        str(home),
        "--output",
        str(out),
        "--yes",
        "--poll-interval",
        "0.2",
        "--preview",
        "4",
    ]


def test_a_canary_key_is_found_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, home = make_table(tmp_path / "in.csv", 12), tmp_path / "home"
    seen: list[str] = []
    with Sandbox(fast_config()) as sb:
        env = clean_env(OPENAI_API_KEY=CANARY)
        # Hybrid in a real process (both engines, the report, progress on stderr) ...
        hybrid = subprocess.run(
            [RP, *_canary_args(src, home, tmp_path / "h.csv", sb.base_url, "hybrid")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert hybrid.returncode == 0, hybrid.stderr
        seen += [hybrid.stdout, hybrid.stderr]
        # ... the other modes in process, and an error the provider answers.
        monkeypatch.setenv("OPENAI_API_KEY", CANARY)
        for mode in ("realtime", "batch"):
            result = CliRunner().invoke(
                main,
                [
                    *_canary_args(src, home, tmp_path / f"{mode}.csv", sb.base_url, mode),
                    "--no-cache",
                ],
            )
            assert result.exit_code == 0, result.output
            seen.append(result.output)
        sb.set_faults(FaultConfig(quota_exhausted_after=0))
        failed = CliRunner().invoke(
            main,
            [
                *_canary_args(src, home, tmp_path / "q.csv", sb.base_url, "realtime"),
                "--no-cache",
                "--max-tokens",
                "7",
            ],
        )
        assert failed.exit_code != 0
        seen.append(failed.output + repr(failed.exception))
    job_id = hybrid.stdout.split("job ")[1].split(":")[0]
    for command in (["jobs"], ["status", job_id]):
        shown = subprocess.run(
            [RP, *command, "--home", str(home)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        seen += [shown.stdout, shown.stderr]
    assert [s for s in seen if CANARY in s] == []
    assert _files_with(tmp_path, CANARY.encode()) == []
    assert _files_with(tmp_path, CANARY[3:20].encode()) == []  # no fragment either


def test_the_ledger_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    src, home = make_table(tmp_path / "in.csv", 3), tmp_path / "home"
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(src),
            "--prompt",
            PROMPT,
            "--provider",
            "sandbox",
            "--mode",
            "realtime",
            "--home",
            str(home),
            "--yes",
            "--no-report",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("rowprompt.db", "rowprompt.db-wal", "rowprompt.db-shm"):
        path = home / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (name, oct(path.stat().st_mode))


def test_the_sandbox_binds_loopback_and_warns_otherwise() -> None:
    with Sandbox(fast_config()) as sb:
        assert sb.host == "127.0.0.1" and sb.base_url.startswith("http://127.0.0.1:")
    for host in ("127.0.0.1", "::1", "localhost"):
        assert exposure_warning(host) is None
    with pytest.warns(UserWarning, match="not loopback"):
        Sandbox(fast_config(), host="0.0.0.0")


@pytest.mark.parametrize(
    ("provider", "model", "key"),
    [
        ("anthropic", "claude-haiku-4-5", "ANTHROPIC_API_KEY"),
        ("azure", "gpt-4o-mini", "AZURE_OPENAI_API_KEY"),
        ("gemini", "gemini-2.5-flash", "GEMINI_API_KEY"),
    ],
)
def test_other_providers_keys_are_found_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str, model: str, key: str
) -> None:
    src, home = make_table(tmp_path / "in.csv", 6), tmp_path / "home"
    monkeypatch.setenv(key, CANARY)
    seen: list[str] = []
    with Sandbox(fast_config()) as sb:
        for mode in ("realtime", "batch"):
            args = _canary_args(src, home, tmp_path / f"{mode}.csv", sb.url, mode)
            args[args.index("openai")] = provider
            result = CliRunner().invoke(main, [*args, "--model", model, "--no-cache"])
            assert result.exit_code == 0, result.output
            seen.append(result.output)
        jobs = [str(row[0]) for row in ledger_query(home, "SELECT id FROM jobs")]
        assert len(jobs) == 2
        for command in (["jobs"], *(["status", job] for job in jobs)):
            shown = CliRunner().invoke(main, [*command, "--home", str(home)])
            assert shown.exit_code == 0, shown.output
            seen.append(shown.output)
    assert [s for s in seen if CANARY in s] == []
    assert _files_with(tmp_path, CANARY.encode()) == []
    assert _files_with(tmp_path, CANARY[3:20].encode()) == []


def test_an_embedding_job_keeps_the_key_out_of_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, home = make_table(tmp_path / "in.csv", 6), tmp_path / "home"
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    seen: list[str] = []
    with Sandbox(fast_config()) as sb:
        for mode in ("realtime", "batch"):
            result = CliRunner().invoke(
                main,
                [
                    "embed",
                    str(src),
                    "--column",
                    "text",
                    "--model",
                    "text-embedding-3-small",
                    "--provider",
                    "openai",
                    "--base-url",
                    sb.base_url,
                    "--mode",
                    mode,
                    "--home",
                    str(home),
                    "--output",
                    str(tmp_path / f"{mode}.csv"),
                    "--poll-interval",
                    "0.2",
                    "--no-cache",
                    "--yes",
                ],
            )
            assert result.exit_code == 0, result.output
            seen.append(result.output)
        jobs = [str(row[0]) for row in ledger_query(home, "SELECT id FROM jobs")]
        assert len(jobs) == 2
        for job in jobs:
            shown = CliRunner().invoke(main, ["status", job, "--home", str(home)])
            assert shown.exit_code == 0, shown.output
            seen.append(shown.output)
    assert (tmp_path / "realtime.csv").exists() and (tmp_path / "batch.csv").exists()
    assert [s for s in seen if CANARY in s] == []
    assert _files_with(tmp_path, CANARY.encode()) == []
    assert _files_with(tmp_path, CANARY[3:20].encode()) == []


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_the_sandbox_command_warns_when_not_on_loopback(
    host: str, warned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []
    monkeypatch.setattr(
        "rowprompt.sandbox.server.serve", lambda config, host, port, **_: served.append(host)
    )
    result = CliRunner().invoke(main, ["sandbox", "--host", host, "--port", "8799"])
    assert result.exit_code == 0, result.output
    assert served == [host]
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning: ")]
    if warned:
        assert len(warnings) == 1 and "not loopback" in warnings[0] and host in warnings[0]
    else:
        assert warnings == []
