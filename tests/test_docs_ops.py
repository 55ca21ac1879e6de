"""The production guide's Grafana dashboard: valid JSON naming only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from farine.ops._metrics import METRIC_NAMES, Metrics

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "docs" / "examples" / "grafana-dashboard.json"


def _expressions(node: Any) -> list[str]:
    """Every PromQL expression (`expr`, template `query`) in a dashboard."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():  # pyright: ignore[reportUnknownVariableType]
            if key in ("expr", "query", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_expressions(value))
    elif isinstance(node, list):
        for item in node:  # pyright: ignore[reportUnknownVariableType]
            found.extend(_expressions(item))
    return found


def _exposed_series() -> set[str]:
    """The series names a scrape can show: each metric, and a histogram's parts."""
    histograms = {
        "farine_handler_seconds",
        "farine_publish_seconds",
        "farine_rpc_client_seconds",
        "farine_rpc_server_seconds",
    }
    names: set[str] = set(METRIC_NAMES)
    for name in histograms:
        names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_metric_names_are_what_the_registry_exposes() -> None:
    exposed = {family.name for family in Metrics().registry.collect()}
    # prometheus-client names a counter's family without its `_total` suffix.
    assert {name.removesuffix("_total") for name in METRIC_NAMES} == exposed


def test_grafana_dashboard_is_json_naming_only_existing_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = _expressions(dashboard)
    assert len(dashboard["panels"]) >= 8
    used = {name for expr in expressions for name in re.findall(r"\bfarine_\w+", expr)}
    assert used, "the dashboard queries no farine metric"
    assert used <= _exposed_series(), sorted(used - _exposed_series())
    # Every metric has a panel.
    shown = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    assert shown == set(METRIC_NAMES)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_every_metric_is_in_the_production_guide(name: str) -> None:
    guide = (ROOT / "docs" / "production.md").read_text(encoding="utf-8")
    assert f"| `{name}` |" in guide
