"""The `Model` base class users derive their models from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import msgspec
import peewee

__all__ = ("Model",)

_encoder = msgspec.json.Encoder()


class Model(peewee.Model):
    """A peewee model whose database is the service's, bound when the service starts.

    Declare models in `<module>/models.py`; every `Model` subclass defined there is
    bound to the service's database at start-up and created by `farine migrate MODULE`.
    """

    if TYPE_CHECKING:
        # peewee's stubs leave these parameters untyped, which pyright's strict mode
        # reports at every use in a user's service; typing them `Any` here keeps the
        # common calls clean. Type checkers only: nothing changes at run time.
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...
        # Same type as peewee's; pyright binds `Self` of the base differently.
        @classmethod
        def select(cls, *fields: Any) -> peewee.ModelSelect[Self]: ...  # pyright: ignore[reportIncompatibleMethodOverride]
        @classmethod
        def create(cls, **query: Any) -> Self: ...
        @classmethod
        def get(cls, *query: Any, **filters: Any) -> Self: ...
        @classmethod
        def get_or_none(cls, *query: Any, **filters: Any) -> Self | None: ...
        @classmethod
        def get_by_id(cls, pk: Any) -> Self: ...
        def save(self, force_insert: bool = False, only: Any = None) -> int: ...

    def to_json(self, extras: dict[str, Any] | None = None) -> str:
        """Return the row as a JSON object (text).

        Values are encoded by msgspec: `datetime`, `date` and `time` become ISO 8601
        strings, `Decimal` and `UUID` strings, `bytes` base64. A foreign key gives the
        related row's id (no query is made).

        Args:
            extras: More keys to include. The row's own fields win when a key is in both,
                as in baguette-messaging. The dict is not modified.

        Raises:
            TypeError: A value msgspec cannot encode.
        """
        # `__data__` holds raw column values (a foreign key's id, not its row), so this
        # never queries the database: it is safe outside a handler too.
        row: dict[str, Any] = self.__data__
        fields: list[peewee.Field[Any]] = self._meta.sorted_fields
        data: dict[str, Any] = dict(extras or {})
        data.update((field.name, row[field.name]) for field in fields if field.name in row)
        try:
            return _encoder.encode(data).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            raise TypeError(f"{type(self).__name__}.to_json(): {exc}") from None
