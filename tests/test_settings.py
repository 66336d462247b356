"""Settings come from QUEUENET_* variables; bad values fail naming the variable."""

from __future__ import annotations

import pytest

from app.settings import AppSettings
from protocol.errors import SettingsError
from protocol.settings import RedisSettings
from worker.settings import WorkerSettings


def test_defaults() -> None:
    app = AppSettings.from_env({})
    assert app.port == 5000 and app.predict_timeout_s == 10.0 and app.max_queue == 1000
    worker = WorkerSettings.from_env({})
    assert worker.batch_size == 32 and worker.model == "efficientnet-lite0"
    assert worker.name().endswith(f"-{__import__('os').getpid()}")


def test_values_are_read() -> None:
    env = {
        "QUEUENET_REDIS_URL": "rediss://:secret@example:6380/2",
        "QUEUENET_NAMESPACE": "blue",
        "QUEUENET_PREDICT_TIMEOUT_S": "2.5",
        "QUEUENET_BATCH_SIZE": "16",
        "QUEUENET_LOG_FORMAT": "JSON",
    }
    app = AppSettings.from_env(env)
    assert app.redis.url.startswith("rediss://") and app.redis.namespace == "blue"
    assert app.predict_timeout_s == 2.5 and app.log_format == "json"
    assert app.redis.redacted_url() == "rediss://:***@example:6380/2"
    assert WorkerSettings.from_env(env).batch_size == 16


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("QUEUENET_PORT", "http", "whole number"),
        ("QUEUENET_PORT", "70000", "at most 65535"),
        ("QUEUENET_PREDICT_TIMEOUT_S", "0", "at least"),
        ("QUEUENET_PREDICT_TIMEOUT_S", "nan", "not a number"),
        ("QUEUENET_MAX_QUEUE", "-5", "at least 1"),
        ("QUEUENET_REDIS_URL", "http://x", "redis://"),
        ("QUEUENET_NAMESPACE", "a b", "letters"),
        ("QUEUENET_LOG_FORMAT", "xml", "text, json"),
    ],
)
def test_bad_web_values_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError, match=name) as info:
        AppSettings.from_env({name: value})
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("QUEUENET_BATCH_SIZE", "0"), ("QUEUENET_BATCH_SIZE", "4096"), ("QUEUENET_MAX_ATTEMPTS", "x")],
)
def test_bad_worker_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        WorkerSettings.from_env({name: value})


def test_redacted_url_without_password() -> None:
    assert RedisSettings(url="redis://h:1/0").redacted_url() == "redis://h:1/0"
