"""`farine asyncapi` in a subprocess, as users run it: formats, output file, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

from tests.asyncapi._validate import assert_valid

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT: Final = Path(__file__).parent.parent.parent
EXAMPLES: Final = ROOT / "examples"


def farine(
    *args: str, cwd: Path = EXAMPLES, code: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run `python -m farine ARGS` (or, with `code`, those lines then `main(ARGS)`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FARINE_INI": ""}
    if code:
        script = "\n".join(
            [*code, "from farine.cli import main", f"sys.exit(main({list(args)!r}))"]
        )
        command = [sys.executable, "-c", "import sys\n" + script]
    else:
        command = [sys.executable, "-m", "farine", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_json_on_stdout_by_default() -> None:
    done = farine("asyncapi", "pingpong")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no log lines: stdout is the document
    document: Any = json.loads(done.stdout)
    assert_valid(document)
    assert set(document["operations"]) == {"pong.on_ball", "ping.serve.publish"}


def test_yaml_to_a_file_is_the_same_document(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.yaml"
    done = farine("asyncapi", "rpcdemo", "--format", "yaml", "--output", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    text = target.read_text()
    assert text.startswith("asyncapi: 3.0.0\n")
    assert "&id" not in text  # repeated schemas are written out, not as YAML anchors
    from_yaml: Any = yaml.safe_load(text)
    assert_valid(from_yaml)
    as_json = farine("asyncapi", "rpcdemo")
    assert from_yaml == json.loads(as_json.stdout)


def test_several_modules_and_the_config_option(tmp_path: Path) -> None:
    config = tmp_path / "farine.ini"
    config.write_text("[DEFAULT]\namqp_uri = amqp://guest:secret@broker.example:5672/prod\n")
    done = farine("asyncapi", "pingpong", "ticker", "-o", "-", "--config", str(config))
    assert done.returncode == 0, done.stderr
    document: Any = json.loads(done.stdout)
    assert_valid(document)
    assert document["info"]["title"] == "pingpong, ticker"
    assert document["servers"]["rabbitmq"]["host"] == "broker.example:5672"
    assert "secret" not in done.stdout


def test_a_missing_module_exits_2_with_one_line() -> None:
    done = farine("asyncapi", "no_such_module")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "farine: error: no module named 'no_such_module.service' "
        "(is 'no_such_module' importable from here?)"
    ]


def test_an_unwritable_output_exits_1_with_one_line(tmp_path: Path) -> None:
    target = tmp_path / "missing-folder" / "asyncapi.json"
    done = farine("asyncapi", "pingpong", "--output", str(target))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"farine: error: cannot write {target}: No such file or directory"
    ]
    assert not target.parent.exists()


def test_yaml_without_pyyaml_exits_2_with_one_line(tmp_path: Path) -> None:
    target = tmp_path / "asyncapi.yaml"
    # `None` in sys.modules makes `import yaml` fail, as when PyYAML is not installed.
    done = farine(
        "asyncapi", "pingpong", "--format", "yaml", "-o", str(target),
        code=["sys.modules['yaml'] = None"],
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "farine: error: YAML output needs PyYAML: pip install 'farine[yaml]' (or use --format json)"
    ]
    assert not target.exists()


def test_an_unknown_format_is_a_usage_error() -> None:
    done = farine("asyncapi", "pingpong", "--format", "xml")
    assert done.returncode == 2
    assert "argument --format: invalid choice: 'xml'" in done.stderr


def test_an_import_error_in_the_services_code_shows_its_traceback_and_exits_1() -> None:
    done = farine("asyncapi", "broken", cwd=ROOT / "tests" / "apps")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" in done.stderr
    assert "this_dependency_does_not_exist" in done.stderr
