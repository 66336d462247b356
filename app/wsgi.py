"""gunicorn entry point: ``gunicorn app.wsgi:app``. Settings and logging come from the env."""

from __future__ import annotations

import os

from app import create_app
from app.settings import AppSettings
from protocol.logconfig import configure_logging

settings = AppSettings.from_env(os.environ)
configure_logging(settings.log_level, settings.log_format)
app = create_app(settings)
