"""The seed README's Database example as a user's package (`models.py`, `service.py`)."""
