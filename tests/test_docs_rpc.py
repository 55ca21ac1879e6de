"""The examples of docs/rpc.md about typed calls, errors and context, run as users run them."""

from __future__ import annotations

import re

import pytest

from tests.test_docs import run_example


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_rpc_chain_example_runs(backend: str) -> None:
    out = run_example(
        "rpc_chain",
        backend,
        r"front: placed 2 x apple for acme",
        r"front: sold out: 3 left of apple",
    )
    # The tenant reached `inventory` through `orders`, with the caller's deadline.
    assert len(re.findall(r"inventory: tenant acme counts apple \([45]s left\)", out)) == 2
    assert "orders.place raised SoldOut: only 3 apple left" in out  # INFO: declared
    assert "ERROR" not in out
