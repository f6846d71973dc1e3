"""Print the table in docs/planner.md: what `auto` picks for a few job shapes, and why.

Each cell is the advice line of a real `rowprompt estimate` on a generated table (sandbox
provider, gpt-4o-mini prices, 600 requests/min), so the table is what users will see.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

RP = str(Path(sys.executable).with_name("rowprompt"))
SHAPES = (100, 10_000, 1_000_000)
DEADLINES = (None, "1h", "24h")


def advice(path: Path, home: Path, deadline: str | None) -> str:
    args = [RP, "estimate", str(path), "--prompt", "Classify: {{ text }}", "--provider",
            "sandbox", "--max-tokens", "10", "--rpm", "600", "--home", str(home)]  # fmt: skip
    if deadline:
        args += ["--deadline", deadline]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("advice:"))
    return line.split(":", 1)[1].strip()


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    print("| rows | no deadline | deadline 1h | deadline 24h |")
    print("|---|---|---|---|")
    for rows in SHAPES:
        path = folder / f"t{rows}.parquet"
        texts = [f"a short review number {i} about a product" for i in range(rows)]
        pd.DataFrame({"text": texts}).to_parquet(path)
        cells = [advice(path, folder / "home", d) for d in DEADLINES]
        print(f"| {rows:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
