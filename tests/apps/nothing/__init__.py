"""A service module that defines no service (no class with entrypoints)."""
