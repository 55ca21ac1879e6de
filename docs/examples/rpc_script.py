"""Call the `stock` service of docs/examples/rpc_stock from a plain script (docs/rpc.md)."""

from __future__ import annotations

import anyio

import farine.rpc


def main() -> None:
    stock = farine.rpc.Client("stock", timeout=10)
    print("plums:", stock.level("plum"))  # blocks until the answer arrives
    print("reserved:", stock.reserve("plum", quantity=3))


async def amain() -> None:
    async with farine.rpc.Client("stock", timeout=10) as stock:
        print("plums:", await stock.level("plum"))


if __name__ == "__main__":
    main()
    anyio.run(amain)
