"""Exceptions raised by the shared protocol code."""


class ProtocolError(Exception):
    """Base class for errors in the web/worker contract."""


class MessageDecodeError(ProtocolError):
    """A message taken from Redis is not valid JSON or does not match the schema."""


class SettingsError(ProtocolError):
    """An environment variable has a value that cannot be used; the message names it."""
