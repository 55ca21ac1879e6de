"""`python -m farine`: the same as the `farine` command."""

from __future__ import annotations

from farine.cli import run_main

run_main()
