"""`make soak`: the long reliability campaigns of issue 9, bounded in count and time.

Crash anywhere (seeded SIGKILLs across realtime, batch and hybrid, then a resume), faults
(each fault with several seeds), and bad-input fuzzing in bulk; prints the figures table of
docs/reliability.md. Options: --crash-trials N (default 36), --fault-seeds N (default 3),
--fuzz-examples N (default 1500), --budget-s S (default 1500: trials left over are skipped
and counted). Exit 1 when any trial loses, duplicates or mis-answers a row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings
from tests.reliability.faults import FAULTS, fault_trial
from tests.reliability.fuzz import table_case, try_case, write_case
from tests.reliability.harness import Trial, crash_trial

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
    """Fuzzed inputs in process: (cases, outcomes, bad messages)."""
    outcomes: Counter[str] = Counter()
    bad: list[str] = []

    @settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=table_case())
    def one(case: dict[str, object]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = write_case(case, Path(directory))
            outcome, message = try_case(path, str(case["template"]))
            outcomes[outcome] += 1
            if outcome == "error" and ("\n" in message or not message):
                bad.append(message)

    one()
    return sum(outcomes.values()), outcomes, bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crash-trials", type=int, default=36)
    parser.add_argument("--fault-seeds", type=int, default=3)
    parser.add_argument("--fuzz-examples", type=int, default=1500)
    parser.add_argument("--budget-s", type=float, default=1500.0)
    args = parser.parse_args()
    started = time.monotonic()
    lines: list[str] = []
    failures: list[Trial] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crash: dict[str, list[Trial]] = {m: [] for m in MODES}
        skipped = Counter[str]()
        for i in range(args.crash_trials):
            mode = MODES[i % len(MODES)]
            if time.monotonic() - started > args.budget_s * 0.7:
                skipped[mode] += 1
                continue
            trial = crash_trial(mode, 1000 + i, root / f"crash-{i}")
            crash[mode].append(trial)
            flag = "ok " if trial.ok else "BAD"
            print(
                f"{flag} crash {mode:<8} seed {trial.seed}: {trial.kill}; at kill: "
                f"{trial.phase}; output at kill {trial.output_at_kill}"
                f"{'; ' + ' | '.join(trial.notes) if trial.notes else ''}",
                flush=True,
            )
            if not trial.ok:
                failures.append(trial)
        for mode in MODES:
            lines.append(row(f"crash anywhere, {mode}", crash[mode], skipped[mode]))
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
    print(f"fuzz: {cases} cases, {dict(outcomes)}, {len(bad)} errors not one clear line")
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
    return 1 if failures or bad else 0


if __name__ == "__main__":
    sys.exit(main())
