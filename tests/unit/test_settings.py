"""The operator's settings: what each LEPTON_* variable means, and the words for a bad one."""

from __future__ import annotations

import logging

import pytest

from lepton.controller.settings import Settings, SettingsError
from lepton.render.networkpolicy import NetworkSettings

KEY = "k" * 64


def test_defaults_watch_everything_and_generate_a_progress_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        first, second = Settings.from_env({}), Settings.from_env({})
    assert first.clusterwide and first.metrics_port == 8080 and first.network_policies
    assert first.progress_key_generated and len(first.progress_key) == 32
    assert first.progress_key != second.progress_key, "a generated key is random, never a guessable default"
    assert "LEPTON_PROGRESS_KEY is not set" in caplog.text and "change on restart" in caplog.text
    assert first.operator_namespace is None and first.network() is None, "out of cluster: no policy to shut it out"


def test_the_progress_key_is_read_and_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        settings = Settings.from_env({"LEPTON_PROGRESS_KEY": KEY})
    assert settings.progress_key == KEY.encode() and not settings.progress_key_generated
    assert not caplog.text
    assert KEY not in repr(settings)


def test_network_settings_come_from_the_operator_and_prometheus_namespaces() -> None:
    env = {"LEPTON_OPERATOR_NAMESPACE": "lepton-system", "LEPTON_PROMETHEUS_NAMESPACE": "monitoring"}
    assert Settings.from_env(env).network() == NetworkSettings("lepton-system", "monitoring")
    assert Settings.from_env({"LEPTON_OPERATOR_NAMESPACE": "ops"}).network() == NetworkSettings("ops", None)
    assert Settings.from_env({**env, "LEPTON_NETWORK_POLICIES": "false"}).network() is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LEPTON_METRICS_PORT": "http"}, "LEPTON_METRICS_PORT must be an integer"),
        ({"LEPTON_PROGRESS_KEY": "short"}, "LEPTON_PROGRESS_KEY must be at least 32 characters"),
        ({"LEPTON_OPERATOR_NAMESPACE": "Lepton_System"}, "LEPTON_OPERATOR_NAMESPACE must be a namespace name"),
        ({"LEPTON_PROMETHEUS_NAMESPACE": "-x"}, "LEPTON_PROMETHEUS_NAMESPACE must be a namespace name"),
        ({"LEPTON_NETWORK_POLICIES": "yes"}, "LEPTON_NETWORK_POLICIES must be true or false"),
        ({"LEPTON_DATA_METRICS_LINGER_SECONDS": "30s"}, "LEPTON_DATA_METRICS_LINGER_SECONDS must be a whole number"),
        ({"LEPTON_DATA_METRICS_LINGER_SECONDS": "601"}, "from 0 to 600"),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        Settings.from_env({"LEPTON_PROGRESS_KEY": KEY, **env})


@pytest.mark.parametrize(("value", "linger"), [(None, None), ("0", None), ("", None), ("30", 30.0)])
def test_a_preparation_lingers_for_a_last_scrape_only_when_asked(value: str | None, linger: float | None) -> None:
    from lepton.controller.dataset import DatasetBinding
    from lepton.controller.registry import bindings

    env = {"LEPTON_PROGRESS_KEY": KEY} | ({"LEPTON_DATA_METRICS_LINGER_SECONDS": value} if value is not None else {})
    settings = Settings.from_env(env)
    (binding,) = [b for b in bindings(settings) if isinstance(b, DatasetBinding)]
    assert settings.data_metrics_linger_seconds == binding.settings.metrics_linger_seconds == linger
