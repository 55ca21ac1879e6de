"""The docs stay true: the configuration table is current, the tutorial example runs."""

from __future__ import annotations

from pathlib import Path

from farine.settings import KEYS, reference_table
from tests._proc import run_farine

ROOT = Path(__file__).parent.parent


def test_configuration_reference_lists_every_key_as_generated() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert reference_table() in text, "regenerate the table with farine.settings.reference_table()"
    for key in KEYS:
        assert f"| `{key.name}` |" in text


def test_tutorial_example_runs_on_both_backends() -> None:
    for backend in ("asyncio", "trio"):
        code, out = run_farine(
            "start", "hello", "--backend", backend, cwd=ROOT / "docs" / "examples"
        )
        assert code == 0, out
        assert "hello #3" in out
        assert "hello from a worker thread" in out
        assert "service stopped: hello" in out


def test_readme_commands_name_existing_things() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "farine start pingpong" in readme
    assert (ROOT / "examples" / "pingpong" / "service.py").exists()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(line.strip() for line in readme.splitlines() if "python -m pytest" in line)
    assert test_command in ci, "the CI test step must be the README's test command"
