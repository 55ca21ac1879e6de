"""Databases for services: peewee models bound to the service's database.

Put the models of `mymodule` in `mymodule/models.py`:

```python
from farine.connectors.sql import *

class User(Model):
    name = CharField()
```

This namespace is peewee's public API (`Model`, the fields, `fn`, `JOIN`, errors, ...)
with farine's `Model` base, plus `setup()`, `init()` and `migrate()`. With
`db_connector` set, each handler call of the service runs with a connection open in its
own worker thread (`self.db`); `async def` handlers use `await self.db_run(fn, ...)`.
See the "Database" guide.
"""

from __future__ import annotations

# peewee's public API (its `__all__`, `Model` aside), re-exported name by name so that
# `from farine.connectors.sql import *` gives users exactly what `from peewee import *` does.
# (A few of peewee's stubs leave parameters untyped: those lines silence pyright.)
from peewee import DJANGO_MAP as DJANGO_MAP
from peewee import DQ as DQ
from peewee import EXCLUDED as EXCLUDED
from peewee import JOIN as JOIN
from peewee import OP as OP
from peewee import PREFETCH_TYPE as PREFETCH_TYPE
from peewee import SQL as SQL
from peewee import AnyField as AnyField
from peewee import AsIs as AsIs  # pyright: ignore[reportUnknownVariableType]
from peewee import AutoField as AutoField
from peewee import BareField as BareField
from peewee import BigAutoField as BigAutoField
from peewee import BigBitField as BigBitField
from peewee import BigIntegerField as BigIntegerField
from peewee import BinaryUUIDField as BinaryUUIDField
from peewee import BitField as BitField
from peewee import BlobField as BlobField
from peewee import BooleanField as BooleanField
from peewee import Case as Case
from peewee import Cast as Cast
from peewee import CharField as CharField
from peewee import Check as Check
from peewee import Column as Column
from peewee import CompositeKey as CompositeKey
from peewee import Context as Context
from peewee import Database as Database
from peewee import DatabaseError as DatabaseError
from peewee import DatabaseProxy as DatabaseProxy
from peewee import DataError as DataError
from peewee import DateField as DateField
from peewee import DateTimeField as DateTimeField
from peewee import DecimalField as DecimalField
from peewee import Default as Default  # pyright: ignore[reportUnknownVariableType]
from peewee import DeferredForeignKey as DeferredForeignKey
from peewee import DeferredThroughModel as DeferredThroughModel
from peewee import DoesNotExist as DoesNotExist
from peewee import DoubleField as DoubleField
from peewee import Entity as Entity
from peewee import Field as Field
from peewee import FixedCharField as FixedCharField
from peewee import FloatField as FloatField
from peewee import ForeignKeyField as ForeignKeyField
from peewee import IdentityField as IdentityField
from peewee import ImproperlyConfigured as ImproperlyConfigured
from peewee import Index as Index
from peewee import IntegerField as IntegerField
from peewee import IntegrityError as IntegrityError
from peewee import InterfaceError as InterfaceError
from peewee import InternalError as InternalError
from peewee import IPField as IPField
from peewee import JSONField as JSONField
from peewee import Load as Load
from peewee import ManyToManyField as ManyToManyField
from peewee import ModelIndex as ModelIndex
from peewee import MySQLDatabase as MySQLDatabase
from peewee import NotSupportedError as NotSupportedError
from peewee import OperationalError as OperationalError
from peewee import PostgresqlDatabase as PostgresqlDatabase
from peewee import PrimaryKeyField as PrimaryKeyField
from peewee import ProgrammingError as ProgrammingError
from peewee import Proxy as Proxy
from peewee import QualifiedNames as QualifiedNames
from peewee import QueryEvent as QueryEvent
from peewee import SchemaManager as SchemaManager
from peewee import Select as Select
from peewee import SmallIntegerField as SmallIntegerField
from peewee import SqliteDatabase as SqliteDatabase
from peewee import Table as Table
from peewee import TextField as TextField
from peewee import TimeField as TimeField
from peewee import TimestampField as TimestampField
from peewee import Tuple as Tuple
from peewee import UUIDField as UUIDField
from peewee import Value as Value
from peewee import ValuesList as ValuesList
from peewee import Window as Window
from peewee import chunked as chunked
from peewee import fn as fn
from peewee import prefetch as prefetch  # pyright: ignore[reportUnknownVariableType]

from ._database import setup as setup
from ._model import Model as Model
from ._models import init as init
from ._models import migrate as migrate
from ._service import DatabaseUnavailable as DatabaseUnavailable
from ._service import WithDatabase as WithDatabase
from ._service import handler_transaction as handler_transaction

__all__ = (
    "DJANGO_MAP",
    "DQ",
    "EXCLUDED",
    "JOIN",
    "OP",
    "PREFETCH_TYPE",
    "SQL",
    "AnyField",
    "AsIs",
    "AutoField",
    "BareField",
    "BigAutoField",
    "BigBitField",
    "BigIntegerField",
    "BinaryUUIDField",
    "BitField",
    "BlobField",
    "BooleanField",
    "Case",
    "Cast",
    "CharField",
    "Check",
    "Column",
    "CompositeKey",
    "Context",
    "DataError",
    "Database",
    "DatabaseError",
    "DatabaseProxy",
    "DatabaseUnavailable",
    "DateField",
    "DateTimeField",
    "DecimalField",
    "Default",
    "DeferredForeignKey",
    "DeferredThroughModel",
    "DoesNotExist",
    "DoubleField",
    "Entity",
    "Field",
    "FixedCharField",
    "FloatField",
    "ForeignKeyField",
    "IPField",
    "IdentityField",
    "ImproperlyConfigured",
    "Index",
    "IntegerField",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "JSONField",
    "Load",
    "ManyToManyField",
    "Model",
    "ModelIndex",
    "MySQLDatabase",
    "NotSupportedError",
    "OperationalError",
    "PostgresqlDatabase",
    "PrimaryKeyField",
    "ProgrammingError",
    "Proxy",
    "QualifiedNames",
    "QueryEvent",
    "SchemaManager",
    "Select",
    "SmallIntegerField",
    "SqliteDatabase",
    "Table",
    "TextField",
    "TimeField",
    "TimestampField",
    "Tuple",
    "UUIDField",
    "Value",
    "ValuesList",
    "Window",
    "WithDatabase",
    "chunked",
    "fn",
    "handler_transaction",
    "init",
    "migrate",
    "prefetch",
    "setup",
)
