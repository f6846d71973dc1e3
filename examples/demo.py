"""`make demo`: the main job end to end on the bundled sandbox (no key, no network).

Runs examples/reviews.csv through the Batch API of an in-process sandbox with scripted
answers, then a short real-time run, with the real `rowprompt` command, and prints a summary.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RP = Path(sys.executable).with_name("rowprompt")


def rowprompt(*args: str) -> None:
    """Run the installed CLI and stop the demo if it fails."""
    command = [str(RP), *args]
    shown = [a if " " not in a else repr(a) for a in args]
    print("$ rowprompt " + " ".join(shown))
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        sys.exit(f"demo: rowprompt {args[0]} failed with exit code {result.returncode}")


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    common = [
        "--prompt-file", str(HERE / "sentiment.prompt"),
        "--provider", "sandbox",
        "--sandbox-rules", str(HERE / "sandbox-rules.json"),
        "--id-column", "review_id",
        "--max-tokens", "5",
        "--home", str(OUT / ".rowprompt"),
        "--yes",
    ]  # fmt: skip
    print("== 1. The whole table through the Batch API (sandbox) ==")
    rowprompt("run", str(HERE / "reviews.csv"), *common, "--mode", "batch",
              "--output", str(OUT / "reviews-batch.xlsx"))  # fmt: skip
    print("\n== 2. A quick real-time look at the first 20 rows ==")
    rowprompt("run", str(HERE / "reviews.csv"), *common, "--mode", "realtime", "--limit", "20",
              "--no-cache",
              "--output", str(OUT / "reviews-realtime.csv"))  # fmt: skip

    batch = pd.read_excel(OUT / "reviews-batch.xlsx")
    realtime = pd.read_csv(OUT / "reviews-realtime.csv", dtype=str, keep_default_na=False)
    print("\n== Summary ==")
    print(f"batch:     {len(batch)} rows, statuses {batch['_status'].value_counts().to_dict()}")
    print(f"           answers {batch['response'].value_counts().to_dict()}")
    print(f"           cost ${batch['_cost_usd'].sum():.4f} (batch price, as gpt-4o-mini)")
    print(f"real time: {len(realtime)} rows, via {realtime['_via'].value_counts().to_dict()}")
    print(f"results:   {OUT / 'reviews-batch.xlsx'}\n           {OUT / 'reviews-realtime.csv'}")


if __name__ == "__main__":
    main()
