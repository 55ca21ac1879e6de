"""Discovery: services of `<module>.service`, in definition order, specs kept per class."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import farine.execute
from farine.discovery import discover, find_entrypoints
from farine.exceptions import ServiceNotFound

APPS = Path(__file__).parent / "apps"


@pytest.fixture(autouse=True)
def _apps_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(APPS))  # pyright: ignore[reportUnknownMemberType]


def test_services_in_definition_order_and_plain_classes_skipped() -> None:
    services = discover("multi")
    assert [s.name for s in services] == ["zeta", "alpha"]
    assert [attr for attr, _ in services[0].entrypoints] == ["work"]


def test_discovering_twice_gives_the_same_services() -> None:
    first = discover("multi")
    second = discover("multi")
    assert [s.cls for s in first] == [s.cls for s in second]
    assert all(len(s.entrypoints) == 1 for s in second)  # no duplicated registrations


def test_missing_module_is_service_not_found() -> None:
    with pytest.raises(ServiceNotFound, match=r"no module named 'no_such_module\.service'"):
        discover("no_such_module")


def test_package_without_service_submodule_is_service_not_found(tmp_path: Path) -> None:
    (tmp_path / "emptypkg").mkdir()
    (tmp_path / "emptypkg" / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ServiceNotFound, match=r"emptypkg\.service"):
            discover("emptypkg")
    finally:
        sys.path.remove(str(tmp_path))


def test_import_error_inside_the_users_module_is_kept() -> None:
    with pytest.raises(ModuleNotFoundError, match="this_dependency_does_not_exist"):
        discover("broken")


def test_inherited_entrypoints_come_first_and_overrides_replace_them() -> None:
    class Base:
        @farine.execute.method()
        def a(self) -> None: ...

        @farine.execute.method()
        def b(self) -> None: ...

    class Child(Base):
        def a(self) -> None: ...  # overridden without decorator: not an entrypoint

        @farine.execute.method()
        def c(self) -> None: ...

    assert [name for name, _ in find_entrypoints(Child)] == ["b", "c"]
