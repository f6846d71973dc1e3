"""The fault campaign: a job against a sandbox that misbehaves; every row must settle."""

from __future__ import annotations

from pathlib import Path

from rowprompt import api
from rowprompt.errors import RowpromptError
from rowprompt.runner import RunOptions
from rowprompt.sandbox import FaultConfig, Sandbox
from tests.helpers import fast_config
from tests.reliability.harness import (
    PROMPT,
    Trial,
    check_output,
    expected_answers,
    make_table,
    paid_per_row,
    record_final,
)

# name: (mode, faults, request timeout)
FAULTS: dict[str, tuple[str, FaultConfig, float]] = {
    "10% 5xx": ("realtime", FaultConfig(error_rate=0.1), 30.0),
    "429 storm (4 requests)": ("realtime", FaultConfig(rate_limit_storm_requests=4), 30.0),
    "429 storm (2 s)": ("realtime", FaultConfig(rate_limit_storm_seconds=2.0), 30.0),
    "slow past the timeout": ("realtime", FaultConfig(slow_rate=0.15, slow_seconds=2.0), 0.5),
    "dropped connections": ("realtime", FaultConfig(drop_rate=0.15), 30.0),
    "all of them at once": (
        "realtime",
        FaultConfig(error_rate=0.1, drop_rate=0.1, slow_rate=0.1, slow_seconds=2.0),
        0.5,
    ),
    "lines missing from batch output": ("batch", FaultConfig(output_drop_rate=0.2), 30.0),
    "truncated lines in batch output": ("batch", FaultConfig(output_truncate_rate=0.2), 30.0),
    # Not excused: the file is still there, so no row of it may be paid twice.
    "download cut mid-file": ("batch", FaultConfig(download_cut_nth=[1]), 30.0),
    "output file ending early": (
        "batch",
        FaultConfig(download_cut_nth=[1], download_cut_style="short"),
        30.0,
    ),
    "first batch fails validation": ("batch", FaultConfig(batch_fail_nth=[1]), 30.0),
    "first batch expires half done": ("batch", FaultConfig(batch_expire_nth=[1]), 30.0),
    "hybrid, 5xx and missing lines": (
        "hybrid",
        FaultConfig(error_rate=0.1, output_drop_rate=0.2),
        30.0,
    ),
}


def fault_trial(name: str, workdir: Path, *, n: int = 40, seed: int = 0) -> Trial:
    """Run one job under the named faults; every row must end ok or failed with a reason."""
    mode, faults, timeout = FAULTS[name]
    workdir.mkdir(parents=True, exist_ok=True)
    src = make_table(workdir / "in.csv", n)
    out = workdir / "out.csv"
    trial = Trial("faults", mode, seed, n, kill=name)
    with Sandbox(fast_config(seed=seed + 1)) as sb:
        sb.set_faults(faults)
        options = RunOptions(
            prompt=PROMPT,
            provider="sandbox",
            base_url=sb.base_url,
            mode=mode,
            home=str(workdir / "home"),
            output=str(out),
            concurrency=8,
            poll_interval=0.2,
            request_timeout=timeout,
            preview=8,
            max_attempts=6,
        )
        try:
            api.run_job(str(src), options)
        except RowpromptError as exc:
            trial.notes.append(f"stopped: {exc.one_line()}")
        except Exception as exc:  # an error without a clear message
            trial.unclear_errors += 1
            trial.notes.append(f"unexpected {type(exc).__name__}: {exc}")
        record_final(trial, check_output(out, n, expected_answers(n, seed + 1)))
        stats = sb.stats()
        trial.faults_served = dict(stats["faults"])
        realtime, batch = paid_per_row(sb, n)
        trial.paid_twice = sum(1 for r in range(n) if realtime[r] + batch[r] > 1)
        # Paid twice by the provider's doing, not rowprompt's: an answer slower than the
        # timeout (the client gave up, the server billed it), or a line the output file lost.
        # A download broken off is not excused: the file is still there to read again.
        lost_lines = trial.faults_served.get("output_missing_lines", 0)
        lost_lines += trial.faults_served.get("output_truncated_lines", 0)
        if faults.download_cut_style == "short":
            lost_lines += trial.faults_served.get("download_cut_lines", 0)
        excused = trial.faults_served.get("slow", 0) + lost_lines
        trial.paid_twice_allowed = min(trial.paid_twice, excused)
        billed_twice = int(stats.get("batch_custom_ids_billed_twice", 0))
        trial.batches_billed_twice = max(0, billed_twice - lost_lines)
    return trial
