"""Connectors to external resources used by services (`farine.connectors.sql`)."""

from __future__ import annotations

__all__ = ()
