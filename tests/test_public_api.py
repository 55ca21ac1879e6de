"""Public namespaces export exactly their public names."""

from __future__ import annotations

import importlib
from typing import cast

import pytest

MODULES = [
    "farine",
    "farine.amqp",
    "farine.rpc",
    "farine.execute",
    "farine.stream",
    "farine.testing",
    "farine.testing.pytest_plugin",
    "farine.exceptions",
    "farine.settings",
    "farine.entrypoints",
    "farine.codec",
    "farine.runtime",
    "farine.extensions",
    "farine.discovery",
    "farine.asyncapi",
    "farine.ops",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported: object = module.__all__
    assert isinstance(exported, tuple)
    exported = cast(tuple[str, ...], exported)
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr} is in __all__ but missing"
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and getattr(value, "__module__", name).startswith(name)
        and not isinstance(value, type(module))
        and (callable(value) or isinstance(value, type))
    }
    assert public <= set(exported), f"{name} defines public names not in __all__"
