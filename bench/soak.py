"""`make soak`: the long reliability campaigns of issue 9, bounded in count and time.

Crash anywhere (SIGKILLs across realtime, batch and hybrid, then a resume: first every kill
point of every mode once, then seeded random kills), faults (each fault with several seeds),
and bad-input fuzzing in bulk; prints the commit measured and the figures table of
docs/reliability.md. Options: --crash-trials N (default 36), --fault-seeds N (default 3),
--fuzz-examples N (default 1500), --budget-s S (default 1500: trials left over are skipped
and counted). Exit 1 when any trial loses, duplicates or mis-answers a row, when a planned
kill point was never reached, or when a bad-input error is not one clear line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings
from tests.reliability.faults import FAULTS, fault_trial
from tests.reliability.fuzz import message_problems, table_case, try_case, write_case
from tests.reliability.harness import Trial, crash_plan, crash_trial

MODES = ("realtime", "batch", "hybrid")


def row(name: str, trials: list[Trial], skipped: int = 0) -> str:
    """One line of the figures table."""
    rows = sum(t.rows for t in trials)
    lost = sum(t.lost for t in trials)
    dup = sum(t.duplicated for t in trials)
    wrong = sum(t.wrong for t in trials)
    paid = sum(t.paid_twice for t in trials)
    allowed = sum(t.paid_twice_allowed for t in trials)
    batches = sum(t.batches_billed_twice for t in trials)
    unclear = sum(t.unclear_errors for t in trials)
    extra = f" ({skipped} skipped: time budget)" if skipped else ""
    return (
        f"| {name} | {len(trials)}{extra} | {rows} | {lost} | {dup} | {wrong} |"
        f" {paid} (all in flight at the kill or excused: {allowed}) | {batches} | {unclear} |"
    )


def fuzz(examples: int) -> tuple[int, Counter[str], list[str]]:
    """Fuzzed inputs in process: (cases, outcomes, bad outcomes). An error is bad when it is
    not one line naming its file (or --prompt), row and column; a run is bad when a prompt
    differs from its cell."""
    outcomes: Counter[str] = Counter()
    bad: list[str] = []

    @settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=table_case())
    def one(case: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = write_case(case, Path(directory))
            outcome, message = try_case(path, case)
            outcomes[outcome] += 1
            if outcome == "wrong prompt":
                bad.append(message)
            elif outcome == "error" and message_problems(message, path, case):
                bad.append(f"{message_problems(message, path, case)}: {message}")

    one()
    return sum(outcomes.values()), outcomes, bad


def commit() -> str:
    """The commit measured, and whether the working tree differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" plus uncommitted changes" if git("status", "--porcelain") else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crash-trials", type=int, default=36)
    parser.add_argument("--fault-seeds", type=int, default=3)
    parser.add_argument("--fuzz-examples", type=int, default=1500)
    parser.add_argument("--budget-s", type=float, default=1500.0)
    args = parser.parse_args()
    started = time.monotonic()
    print(f"rowprompt soak at commit {commit()}", flush=True)
    lines: list[str] = []
    failures: list[Trial] = []
    missed: list[str] = []
    phases: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crash: dict[str, list[Trial]] = {m: [] for m in MODES}
        skipped = Counter[str]()
        for i, (mode, kill) in enumerate(crash_plan(args.crash_trials, MODES)):
            if time.monotonic() - started > args.budget_s * 0.7:
                skipped[mode] += 1
                if kill is not None:
                    missed.append(f"{mode} {kill} (time budget)")
                continue
            trial = crash_trial(mode, 1000 + i, root / f"crash-{i}", kill=kill)
            crash[mode].append(trial)
            phases[trial.phase if trial.killed else "not killed: the job ended first"] += 1
            if kill is not None and not trial.killed:
                missed.append(f"{mode} {kill}")
            flag = "ok " if trial.ok else "BAD"
            print(
                f"{flag} crash {mode:<8} seed {trial.seed}: {trial.kill}"
                f"{'' if trial.killed else ' (NOT KILLED)'}; at kill: {trial.phase};"
                f" output at kill {trial.output_at_kill}"
                f"{'; ' + ' | '.join(trial.notes) if trial.notes else ''}",
                flush=True,
            )
            if not trial.ok:
                failures.append(trial)
        for mode in MODES:
            lines.append(row(f"crash anywhere, {mode}", crash[mode], skipped[mode]))
        print("where the kills landed (the ledger at the kill):")
        for phase, count in phases.most_common():
            print(f"  {count:>3}  {phase}")
        for point in missed:
            print(f"MISSED kill point: {point}")
        faults: list[Trial] = []
        for name in FAULTS:
            for seed in range(args.fault_seeds):
                if time.monotonic() - started > args.budget_s * 0.9:
                    break
                trial = fault_trial(name, root / f"fault-{len(faults)}", n=60, seed=seed)
                faults.append(trial)
                print(
                    f"{'ok ' if trial.ok else 'BAD'} fault {name} seed {seed}: served "
                    f"{trial.faults_served}; {' | '.join(trial.notes)}",
                    flush=True,
                )
                if not trial.ok:
                    failures.append(trial)
        lines.append(row("faults (all kinds)", faults))
    cases, outcomes, bad = fuzz(args.fuzz_examples)
    print(f"fuzz: {cases} cases, {dict(outcomes)}, {len(bad)} bad")
    for message in bad[:20]:
        print(f"BAD fuzz case: {message}")
    lines.append(
        f"| bad input (fuzz, in process) | {cases} | – | 0 | 0 | 0 | 0 (nothing sent) | 0 |"
        f" {len(bad)} |"
    )
    print(
        "\n| campaign | trials | rows | lost | duplicated | wrong answer |"
        " requests paid twice | batch lines paid twice | errors without a clear message |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\n{time.monotonic() - started:.0f} s; {len(failures)} failing trial(s)")
    for trial in failures:
        print(f"FAILED: {trial}")
    return 1 if failures or bad or missed else 0


if __name__ == "__main__":
    sys.exit(main())
