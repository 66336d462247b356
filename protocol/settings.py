"""Settings: each ``QUEUENET_*`` variable is declared once, here or beside the settings class
of the tier that reads it, with its default, bounds, meaning and reader; everything else (the
``from_env`` of each tier, the README's table, ``queuenet settings``) reads that declaration.

Only entry points call ``from_env``; everything below them receives a frozen settings object.
A bad value fails at start with a :class:`SettingsError` that names the variable.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocol.errors import SettingsError

PREFIX = "QUEUENET_"
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    """One environment variable: what it means, its default and how its text is read."""

    name: str
    """Without the prefix: ``PREDICT_TIMEOUT_S`` is ``QUEUENET_PREDICT_TIMEOUT_S``."""
    default: Any
    doc: str
    tier: str
    """Who reads it: ``web``, ``worker``, ``serve`` or ``all``."""
    parse: Callable[[str, str], Any]
    """``(variable, text) -> value``; raises :class:`SettingsError` naming the variable."""
    shown_default: str = ""
    """The default as the README shows it, when ``repr`` would not do (``~/.cache/...``)."""
    default_factory: Callable[[], Any] | None = None

    @property
    def variable(self) -> str:
        return PREFIX + self.name

    def read(self, env: Mapping[str, str]) -> Any:
        """The value in ``env``, or the default when the variable is unset or empty."""
        raw = env.get(self.variable, "").strip()
        if not raw:
            return self.default_factory() if self.default_factory else self.default
        return self.parse(self.variable, raw)

    def default_text(self) -> str:
        if self.shown_default:
            return self.shown_default
        if isinstance(self.default, bool):
            return "`1` (on)" if self.default else "`0` (off)"
        if self.default == "" or self.default == ():
            return "–"
        return f"`{self.default}`"


_DECLARED: dict[str, Setting] = {}


def declared() -> list[Setting]:
    """Every setting declared so far (import ``app.settings``, ``worker.settings`` first)."""
    return sorted(_DECLARED.values(), key=lambda s: (_TIER_ORDER.index(s.tier), s.name))


_TIER_ORDER = ("all", "web", "worker", "serve")


def declare(
    name: str,
    default: Any,
    doc: str,
    *,
    tier: str,
    parse: Callable[[str, str], Any],
    shown_default: str = "",
    default_factory: Callable[[], Any] | None = None,
) -> Setting:
    if name in _DECLARED:
        raise RuntimeError(f"{PREFIX}{name} is declared twice")
    if tier not in _TIER_ORDER:
        raise ValueError(f"unknown tier {tier!r}")
    setting = Setting(name, default, doc, tier, parse, shown_default, default_factory)
    _DECLARED[name] = setting
    return setting


def setting_field(setting: Setting) -> Any:
    """A dataclass field whose default and meaning come from ``setting``."""
    metadata = {"setting": setting}
    if setting.default_factory is not None:
        return field(default_factory=setting.default_factory, metadata=metadata)
    return field(default=setting.default, metadata=metadata)


def from_env(cls: type[T], env: Mapping[str, str]) -> T:
    """An instance of the settings dataclass ``cls`` read from ``env``: each field declared
    with :func:`setting_field` from its variable, each nested settings class (a field whose
    metadata says ``nested``) by the same rule."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if "setting" in f.metadata:
            values[f.name] = f.metadata["setting"].read(env)
        elif "nested" in f.metadata:
            values[f.name] = from_env(f.metadata["nested"], env)
    return cls(**values)


def fields_of(cls: type[Any]) -> Iterator[Setting]:
    for f in dataclasses.fields(cls):
        if "setting" in f.metadata:
            yield f.metadata["setting"]
        elif "nested" in f.metadata:
            yield from fields_of(f.metadata["nested"])


# --- readers ---------------------------------------------------------------------------------


def text(variable: str, raw: str) -> str:
    return raw


def whole(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(variable: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{variable}={raw!r} is not a whole number") from None
        _check_range(variable, value, minimum, maximum)
        return value

    return parse


def number(minimum: float, maximum: float | None = None) -> Callable[[str, str], float]:
    def parse(variable: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{variable}={raw!r} is not a number") from None
        if math.isnan(value):
            raise SettingsError(f"{variable}={raw!r} is not a number")
        _check_range(variable, value, minimum, maximum)
        return value

    return parse


def switch(variable: str, raw: str) -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{variable}={raw!r} must be 1/true/yes/on or 0/false/no/off")


def choice(*choices: str) -> Callable[[str, str], str]:
    def parse(variable: str, raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise SettingsError(f"{variable}={value!r} must be one of {', '.join(choices)}")
        return value

    return parse


def _check_range(variable: str, value: float, minimum: float, maximum: float | None) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise SettingsError(f"{variable}={value} must be at least {minimum}{upper}")


def _redis_url(variable: str, raw: str) -> str:
    from protocol.topology import TopologyError, parse

    try:
        parse(raw)
    except TopologyError as exc:
        raise SettingsError(f"{variable}={_redact(raw)!r}: {exc}") from None
    return raw


def _namespace(variable: str, raw: str) -> str:
    if not _NAMESPACE_RE.match(raw):
        raise SettingsError(f"{variable}={raw!r} may only hold letters, digits, '_', '.', '-'")
    return raw


# --- settings both tiers read ----------------------------------------------------------------

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL = declare(
    "REDIS_URL",
    DEFAULT_REDIS_URL,
    "DSN: `redis://[:password@]host:port/db`, `rediss://` (TLS), `unix:///path`; several, "
    "comma-separated (independent shards); `redis+sentinel://[:password@]host:port[,...]/"
    "SERVICE` (Sentinel); `redis+cluster://[:password@]host:port[,...]` (Redis Cluster); "
    "`rediss+` for TLS",
    tier="all",
    parse=_redis_url,
    shown_default="`redis://127.0.0.1:6379/0` (`serve`: a private Redis)",
)
SHARDS = declare(
    "SHARDS",
    0,
    "queue shards per model version, each under its own hash tag; 0: one per server in "
    "`QUEUENET_REDIS_URL` (1 for Sentinel, 3 for Redis Cluster). Every process of a "
    "deployment must use the same number",
    tier="all",
    parse=whole(0, 1024),
)
NAMESPACE = declare(
    "NAMESPACE",
    "queuenet",
    "prefix of every Redis key; several deployments can share one Redis under different names",
    tier="all",
    parse=_namespace,
)
REDIS_CONNECT_TIMEOUT_S = declare(
    "REDIS_CONNECT_TIMEOUT_S",
    1.0,
    "seconds to wait for a connection to Redis",
    tier="all",
    parse=number(0.05),
)
REDIS_SOCKET_TIMEOUT_S = declare(
    "REDIS_SOCKET_TIMEOUT_S",
    5.0,
    "seconds to wait for a reply (blocking waits get their own timeout on top)",
    tier="all",
    parse=number(0.05),
)
LOG_LEVEL = declare(
    "LOG_LEVEL",
    "info",
    "`debug`, `info`, `warning`, `error`",
    tier="all",
    parse=choice("debug", "info", "warning", "error"),
)
LOG_FORMAT = declare(
    "LOG_FORMAT",
    "text",
    "`text` or `json` (one object per line)",
    tier="all",
    parse=choice("text", "json"),
)


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how long to wait for it."""

    url: str = setting_field(REDIS_URL)
    namespace: str = setting_field(NAMESPACE)
    shards: int = setting_field(SHARDS)
    """0: as many as the URL names servers (see :mod:`protocol.backend`)."""
    connect_timeout_s: float = setting_field(REDIS_CONNECT_TIMEOUT_S)
    socket_timeout_s: float = setting_field(REDIS_SOCKET_TIMEOUT_S)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisSettings:
        return from_env(cls, env)

    def redacted_url(self) -> str:
        """The URL with any password replaced, for logs."""
        return ",".join(_redact(part) for part in self.url.split(","))


def nested(cls: type[Any]) -> Any:
    """A settings field holding another settings class, read by the same :func:`from_env`."""
    return field(default_factory=cls, metadata={"nested": cls})


def _redact(url: str) -> str:
    """The URL with the password (in the userinfo, a ``password=`` or a
    ``sentinel_password=`` query) masked; works on multi-host URLs too."""
    masked = re.sub(r"^([a-z+]+://[^:/@]*):[^@/]*@", r"\1:***@", url.strip())
    return re.sub(r"([?&](?:sentinel_)?password=)[^&]*", r"\1***", masked)


def markdown_table(settings: list[Setting]) -> str:
    """The README's settings table, made from the declarations."""
    rows = ["| setting | default | meaning | read by |", "| --- | --- | --- | --- |"]
    for s in settings:
        rows.append(f"| `{s.variable}` | {s.default_text()} | {s.doc} | {s.tier} |")
    return "\n".join(rows) + "\n"
