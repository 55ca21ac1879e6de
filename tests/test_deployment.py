"""The deployment page's files: the systemd unit verifies, the Dockerfile is well formed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._proc import ROOT

DEPLOY = ROOT / "docs" / "examples" / "deploy"
#: The instructions of the Dockerfile reference (docs.docker.com/reference/dockerfile).
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def _verify(unit: Path) -> str:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else " (failed)")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "farine-shop.service"
    text = (DEPLOY / "farine-shop.service").read_text()
    # systemd checks that ExecStart's program exists: point it at this environment's.
    farine = str(Path(sys.executable).parent / "farine")
    unit.write_text(text.replace("/srv/shop/.venv/bin/farine", farine))
    assert _verify(unit) == ""
    # The check can fail: a mistyped key is reported.
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restartt=on-failure"))
    assert "Unknown key 'Restartt'" in _verify(unit)


def test_the_dockerfile_is_well_formed_and_installs_the_checkout() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    # Continuation lines joined, comments and blank lines dropped.
    lines = [
        line for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]  # fmt: skip
    instructions = [line.split()[0] for line in lines]
    assert set(instructions) <= INSTRUCTIONS, instructions
    assert instructions[0] == "FROM"
    assert "pip install --no-cache-dir /opt/farine" in text  # the project's own install
    assert lines[-1] == 'CMD ["farine", "start", "shop"]'


def test_the_page_shows_the_checked_files() -> None:
    page = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r'```\w+ title="([^"]+)"\n(.*?)```\n', page, flags=re.DOTALL)
    assert {path for path, _ in blocks} == {"farine-shop.service", "Dockerfile"}
    for path, code in blocks:
        assert code == (DEPLOY / path).read_text(), path
