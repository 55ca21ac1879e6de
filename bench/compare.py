"""Throughput rows of two farine trees side by side: did a change move them? (a script)

Runs rows of `bench/amqp_throughput.py` from each tree given (a checkout or worktree of
another commit, and this one), every row in a process of its own with that tree first
on `PYTHONPATH`, then lets them take turns, `--batch` messages each, so that the drift
of the machine weighs on every row alike. Rows run one after the other, minutes apart,
differ by a fifth on a small VM; taking turns, the same row of two trees agrees to
about 3% over twelve batches.

    git worktree add /tmp/before HEAD~1
    python bench/compare.py --tree before=/tmp/before --tree after=. \\
        --row "farine asyncio stock, def" --row "raw aiormq (asyncio)" --messages 12000

Prints, per tree and row, the median msg/s and CPU per message, and the median over
the turns of its ratio to the first tree's same row (and to raw aiormq, when a raw row
is among `--row`).
"""

from __future__ import annotations

import argparse
import math
import statistics
from typing import TYPE_CHECKING

from _paths import RowProcess, tree_arg
from amqp_throughput import path_of

if TYPE_CHECKING:
    from pathlib import Path


def _start(name: str, tree: Path, label: str) -> RowProcess:
    """Row `label` of `tree`'s throughput script, in a process of its own, set up.
    Errors name the row `name: label`.

    Raises:
        RuntimeError: The row failed, or runs on the other path than its label names.
    """
    script = str(tree / "bench" / "amqp_throughput.py")
    process = RowProcess(
        script, [], label, path_of(label), pythonpath=str(tree), shown=f"{name}: {label}"
    )
    process.check_ready()
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--tree", action="append", required=True, help="NAME=PATH of a farine tree (repeat)"
    )
    parser.add_argument("--row", action="append", required=True, help="a row's label (repeat)")
    parser.add_argument("--messages", type=int, default=12000, help="per row, in all")
    parser.add_argument("--batch", type=int, default=1000, help="messages per turn")
    args = parser.parse_args()
    trees = [tree_arg(str(given), "amqp_throughput.py") for given in args.tree]
    labels: list[str] = list(args.row)
    batch: int = args.batch
    turns = max(1, args.messages // batch)
    rows = [(name, label, _start(name, tree, label)) for name, tree in trees for label in labels]
    rates: dict[tuple[str, str], list[float]] = {(n, lab): [] for n, lab, _ in rows}
    cpu: dict[tuple[str, str], list[float]] = {(n, lab): [] for n, lab, _ in rows}
    try:
        for turn in range(turns):
            shift = turn % len(rows)
            for name, label, process in rows[shift:] + rows[:shift]:
                process.send(["run", batch])
                seconds, cpu_seconds = process.answer()
                rates[(name, label)].append(batch / seconds)
                cpu[(name, label)].append(cpu_seconds / batch * 1e6)
    finally:
        for _, _, process in rows:
            process.send(["stop", 0])
        for _, _, process in rows:
            process.process.wait()
    raw = next((label for label in labels if "raw" in label), None)
    first = trees[0][0]
    print(f"{turns} turns of {batch} messages per row")
    print(f"{'tree':<10} {'row':<44} {'msg/s':>7} {'cpu us':>7} {'x ' + first:>9} {'x raw':>6}")
    for name, label, _ in rows:
        mine = rates[(name, label)]
        to_first = [a / b for a, b in zip(mine, rates[(first, label)], strict=True)]
        to_raw = [a / b for a, b in zip(mine, rates[(name, raw)], strict=True)] if raw else []
        print(
            f"{name:<10} {label:<44} {statistics.median(mine):>7.0f}"
            f" {statistics.median(cpu[(name, label)]):>7.0f}"
            f" {statistics.median(to_first):>9.3f}"
            f" {statistics.median(to_raw) if to_raw else math.nan:>6.3f}"
        )


if __name__ == "__main__":
    main()
