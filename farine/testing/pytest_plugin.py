"""farine's pytest plugin, loaded by pytest through the `pytest11` entry point.

It gives every test the same starting configuration, and restores the one that was
current before, so that a test changing settings (`farine.settings.use()`) never leaks
into the next one:

- `farine_config` (fixture): the configuration current during each test. By default
  farine's defaults (a `memory://` broker, no database), whatever `FARINE_INI` or
  `/etc/farine.ini` say. Override it in your `conftest.py` to test with your settings.

To run every async test on both anyio backends, declare anyio's `anyio_backend`
fixture in your `conftest.py` (anyio's default is asyncio only):

```python
@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from farine import settings
from farine.settings import Config

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ("farine_config",)


@pytest.fixture
def farine_config() -> Config:
    """The configuration current during a test (default: farine's defaults).

    Example:
        ```python
        # conftest.py
        @pytest.fixture
        def farine_config():
            return Config.from_string("[orders]\\nprefetch = 1\\n")
        ```
    """
    return Config.from_string("", source="<farine_config>")


@pytest.fixture(autouse=True)
def _farine_settings(farine_config: Config) -> Iterator[None]:
    """Make `farine_config` current for the test; restore the previous one after it."""
    with settings.using(farine_config):
        yield
