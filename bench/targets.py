"""The performance targets, checked against the JSON the benchmark scripts print last.

A script, not a test: it reads saved outputs of `amqp_throughput.py`, `rpc.py` and
`consumers.py` (any of them; the last line of each is its JSON) and prints one Markdown
table row per target, with the figure and whether it is met, for docs/performance.md.

    python bench/amqp_throughput.py --repeat 3 | tee /tmp/amqp.txt
    python bench/rpc.py --rounds 1 --repeat 3 | tee /tmp/rpc.txt
    python bench/consumers.py | tee /tmp/consumers.txt
    python bench/targets.py --throughput /tmp/amqp.txt --rpc /tmp/rpc.txt \\
        --consumers /tmp/consumers.txt
"""

from __future__ import annotations

import argparse
import json
import operator
from pathlib import Path
from typing import Any

BACKENDS = ("asyncio", "trio")


def last_json(path: Path) -> dict[str, Any]:
    """The JSON object on the last line of `path` that holds one.

    Raises:
        SystemExit: `path` holds no JSON line.
    """
    for line in reversed(path.read_text().splitlines()):
        if line.startswith("{"):
            found: dict[str, Any] = json.loads(line)
            return found
    raise SystemExit(f"{path}: no JSON line (is it a benchmark's output?)")


class Table:
    """The rows of the targets table, as Markdown."""

    def __init__(self) -> None:
        self.lines = [
            "| target | row | figure | verdict |",
            "| --- | --- | ---: | --- |",
        ]

    def check(
        self, target: str, row: str, figure: float | None, bound: float, at_most: bool
    ) -> None:
        if figure is None:
            self.lines.append(f"| {target} | {row} | (not measured) | - |")
            return
        met = (operator.le if at_most else operator.ge)(figure, bound)
        self.lines.append(f"| {target} | {row} | {figure:.2f} | {'met' if met else 'NOT met'} |")

    def note(self, what: str, row: str, figure: float) -> None:
        """A figure shown beside the targets, with no verdict."""
        self.lines.append(f"| {what} | {row} | {figure:.2f} | - |")


def throughput(table: Table, found: dict[str, Any]) -> None:
    """Issue 17 item 7 and 8 (1 MiB), and the 5% floors of issues 19 and 21."""
    median: dict[str, dict[str, float]] = found["median"]

    def ratio(label: str) -> float | None:
        return median[label]["x_raw"] if label in median else None

    for backend in BACKENDS:
        for kind in ("async def", "def"):
            row = f"farine {backend} fast, {kind}"
            table.check("fast: msg/s >= 1.0x raw", row, ratio(row), 1.0, at_most=False)
        floor = 0.9 if backend == "asyncio" else 0.8
        for kind in ("async def", "def"):
            row = f"farine {backend} stock, {kind}"
            table.check(f"stock: msg/s >= {floor}x raw", row, ratio(row), floor, at_most=False)
    for backend in BACKENDS:
        for path in ("fast", "stock"):
            plain = median.get(f"farine {backend} {path}, async def")
            for extra, issue in ((", retry= dead_letter=", "19"), (", --http", "21")):
                row = f"farine {backend} {path}, async def{extra}"
                other = median.get(row)
                if plain is None or other is None:
                    continue
                # Within 5%: the rate no lower, the CPU per message no higher, by 5%.
                table.check(
                    f"#{issue}: msg/s >= 0.95x the plain row",
                    row,
                    other["rate"] / plain["rate"],
                    0.95,
                    at_most=False,
                )
                table.check(
                    f"#{issue}: CPU/msg <= 1.05x the plain row",
                    row,
                    other["cpu"] / plain["cpu"],
                    1.05,
                    at_most=True,
                )
    for backend in BACKENDS:
        for path in ("fast", "stock"):
            row = f"1 MiB: farine {backend} {path}"
            if row not in median:
                continue
            table.check("1 MiB: MiB/s >= 0.9x raw", row, median[row]["x_raw"], 0.9, False)
            table.check("1 MiB: peak RSS <= 1.5x raw", row, median[row]["rss_x_raw"], 1.5, True)


def rpc(table: Table, found: dict[str, Any]) -> None:
    """Issue 17 item 7 (RPC) and issue 20's floor (typed within 5% of untyped)."""
    ratios: dict[str, dict[str, float]] = found["ratio_to_raw_aiormq"]
    figures: dict[str, dict[str, float]] = found["figures"]
    for backend in BACKENDS:
        for kind, p50 in (("async def", 0.9), ("def", 1.2)):
            row = f"farine {backend} fast, {kind}"
            if row not in ratios:
                continue
            calls = ratios[row]["calls_per_s"]
            table.check("fast: RPC calls/s (64 in flight) >= 1.3x raw", row, calls, 1.3, False)
            table.check(f"fast: RPC p50 <= {p50}x raw", row, ratios[row]["p50"], p50, True)
    for backend in BACKENDS:
        for path in ("fast", "stock"):
            plain = figures.get(f"farine {backend} {path}, async def")
            row = f"farine {backend} {path}, async def, typed"
            typed = figures.get(row)
            if plain is None or typed is None:
                continue
            ratio = typed["calls_per_s"] / plain["calls_per_s"]
            table.check("#20: typed calls/s >= 0.95x untyped", row, ratio, 0.95, False)


def consumers(table: Table, found: dict[str, Any]) -> None:
    """Issue 17 item 8: 100 consumers."""
    median: dict[str, dict[str, float]] = found["median"]
    for backend in BACKENDS:
        for path in ("fast", "stock"):
            row = f"farine {backend} {path}"
            figures = median.get(f"K=100: {row}")
            if figures is None:
                continue
            table.check("100 consumers: ready <= 1.5x raw", row, figures["ready_x_raw"], 1.5, True)
            # The issue's measure: the memory 100 consumers take beyond one consumer.
            table.check(
                "100 consumers: RSS growth beyond one consumer <= 3x raw's",
                row,
                figures.get("beyond_x_raw"),
                3.0,
                True,
            )
            table.note(
                "100 consumers: RSS growth from the start (for reference)",
                row,
                figures["growth_x_raw"],
            )


def main() -> None:
    parser = argparse.ArgumentParser(description="Check the performance targets.")
    parser.add_argument("--throughput", type=Path, help="amqp_throughput.py's output")
    parser.add_argument("--rpc", type=Path, help="rpc.py's output")
    parser.add_argument("--consumers", type=Path, help="consumers.py's output")
    args = parser.parse_args()
    table = Table()
    if args.throughput:
        throughput(table, last_json(args.throughput))
    if args.rpc:
        rpc(table, last_json(args.rpc))
    if args.consumers:
        consumers(table, last_json(args.consumers))
    print("\n".join(table.lines))


if __name__ == "__main__":
    main()
