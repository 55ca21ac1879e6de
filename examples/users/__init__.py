"""The seed README's Database example, on SQLite (see `service.py`)."""
