"""Logs its own settings, which hold passwords that must not appear."""

from __future__ import annotations

import logging

import farine.execute
import farine.settings

log = logging.getLogger("secretlog")


class Secretlog:
    @farine.execute.method(restart=False)
    def show(self) -> None:
        settings = farine.settings.get("secretlog")
        log.info("uri is %s", settings.amqp_uri)
        log.info("settings are %r", settings)
        log.info("password is %s", settings.db_password)
        raise RuntimeError(f"failed connecting to {settings.amqp_uri}")
