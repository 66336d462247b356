"""Reading ``QUEUENET_*`` environment variables, and the Redis settings both processes share.

Only entry points call ``from_env``; everything below them receives a frozen settings object.
A bad value fails at start with a :class:`SettingsError` that names the variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from protocol.errors import SettingsError

PREFIX = "QUEUENET_"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    """The variable's value, or ``default`` when it is unset or empty."""
    value = env.get(PREFIX + name, "").strip()
    return value or default


def env_int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    """An integer variable within ``[minimum, maximum]``."""
    raw = env.get(PREFIX + name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is not a whole number") from None
    _check_range(name, value, minimum, maximum)
    return value


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float,
    maximum: float | None = None,
) -> float:
    """A decimal variable within ``[minimum, maximum]``."""
    raw = env.get(PREFIX + name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is not a number") from None
    if value != value:  # NaN
        raise SettingsError(f"{PREFIX}{name}={raw!r} is not a number")
    _check_range(name, value, minimum, maximum)
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A switch: 1/true/yes/on or 0/false/no/off (case-insensitive)."""
    raw = env.get(PREFIX + name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{PREFIX}{name}={raw!r} must be 1/true/yes/on or 0/false/no/off")


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive)."""
    value = env_str(env, name, default).lower()
    if value not in choices:
        raise SettingsError(f"{PREFIX}{name}={value!r} must be one of {', '.join(choices)}")
    return value


def _check_range(name: str, value: float, minimum: float, maximum: float | None) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise SettingsError(f"{PREFIX}{name}={value} must be at least {minimum}{upper}")


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how long to wait for it."""

    url: str = DEFAULT_REDIS_URL
    """Redis DSN: ``redis://[:password@]host:port/db``, ``rediss://`` (TLS) or ``unix:///path``."""
    namespace: str = "queuenet"
    """Prefix of every key; several deployments can share one Redis under different names."""
    connect_timeout_s: float = 1.0
    """Seconds to wait for a TCP connection before answering 503 / retrying."""
    socket_timeout_s: float = 5.0
    """Seconds to wait for a reply to a non-blocking command."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisSettings:
        url = env_str(env, "REDIS_URL", DEFAULT_REDIS_URL)
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise SettingsError(
                f"{PREFIX}REDIS_URL={_redact(url)!r} must start with redis://, rediss:// or unix://"
            )
        namespace = env_str(env, "NAMESPACE", "queuenet")
        if not _NAMESPACE_RE.match(namespace):
            raise SettingsError(
                f"{PREFIX}NAMESPACE={namespace!r} may only hold letters, digits, '_', '.', '-'"
            )
        return cls(
            url=url,
            namespace=namespace,
            connect_timeout_s=env_float(env, "REDIS_CONNECT_TIMEOUT_S", 1.0, minimum=0.05),
            socket_timeout_s=env_float(env, "REDIS_SOCKET_TIMEOUT_S", 5.0, minimum=0.05),
        )

    def redacted_url(self) -> str:
        """The URL with any password replaced, for logs."""
        return _redact(self.url)


def _redact(url: str) -> str:
    """The URL with the password (in the userinfo or a ``password=`` query) masked."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if "password=" in parts.query:
        parts = parts._replace(query=re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query))
    return parts.geturl()
