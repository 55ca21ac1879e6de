"""A user's package for the database tests: `models.py` and `service.py`."""
