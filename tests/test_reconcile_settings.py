"""`reconcile`'s settings: the workers' variables, its own options, one-line errors."""

import argparse
from pathlib import Path

import pytest

from consumer.settings import (
    RECONCILE_OPTIONS,
    ConfigError,
    ReconcileSettings,
    options_table,
    reconcile_flags_table,
    reconcile_settings,
)

BASE = {"bootstrap_servers": "127.0.0.1:9", "topic": "sessions"}


def settings(env: dict[str, str] | None = None, **flags: str | None) -> ReconcileSettings:
    return reconcile_settings(argparse.Namespace(**{**BASE, **flags}), environ=env or {})


def test_the_workers_configuration_is_read_from_the_same_variables() -> None:
    s = settings(
        {
            "SESSION_METRICS_DEDUP_WINDOW": "7",
            "SESSION_METRICS_GROUP_ID": "workers",
            "SESSION_METRICS_DEDUP_STORE": "redis://redis:6379",
            "SESSION_METRICS_PROMETHEUS_URL": "http://prom:9090/",
        }
    )
    assert (s.dedup_window, s.group_id, s.dedup_store, s.prometheus_url) == (
        7,
        "workers",
        True,
        "http://prom:9090",
    )


@pytest.mark.parametrize(
    ("flags", "env", "names"),
    [
        ({"prometheus_url": "prom:9090"}, {}, "--prometheus-url"),
        ({"prometheus_url": "http://u:p@prom"}, {}, "--prometheus-url"),
        ({"prometheus_url": "http://prom", "from": 1000}, {}, "partial range"),
        ({"offsets": {("sessions", 0): (0, 5)}, "from": 1000}, {}, "--offsets"),
        ({"from": 2000, "to": 1000}, {}, "--to"),
        ({"prometheus_username": "u"}, {}, "SESSION_METRICS_PROMETHEUS_PASSWORD"),
        ({}, {"SESSION_METRICS_PROMETHEUS_PASSWORD": "s3cret"}, "--prometheus-username"),
        (
            {"prometheus_username": "u"},
            {
                "SESSION_METRICS_PROMETHEUS_PASSWORD": "s3cret",
                "SESSION_METRICS_PROMETHEUS_BEARER_TOKEN": "t",
            },
            "BEARER_TOKEN",
        ),
    ],
)
def test_bad_reconcile_settings_are_one_line_naming_the_setting(
    flags: dict[str, object], env: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(env, **flags)  # type: ignore[arg-type]
    assert names in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_the_configuration_guide_lists_the_reconcile_options() -> None:
    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert options_table(RECONCILE_OPTIONS) in text
    assert reconcile_flags_table() in text
