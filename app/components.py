"""The web application's shared objects: its settings, model router and prediction service.

``create_app`` puts them on the Flask app once; every blueprint reads them through these
accessors, so their keys and types are written in one place.
"""

from __future__ import annotations

from flask import Flask, current_app

from app.queueing import PredictionService
from app.routing import ModelRouter
from app.settings import AppSettings
from protocol.backend import Backend

BACKEND, SETTINGS = "queuenet.backend", "queuenet.settings"
ROUTER, SERVICE = "queuenet.router", "queuenet.service"


def install(
    app: Flask,
    *,
    backend: Backend,
    settings: AppSettings,
    router: ModelRouter,
    service: PredictionService,
) -> None:
    app.extensions[BACKEND] = backend
    app.extensions[SETTINGS] = settings
    app.extensions[ROUTER] = router
    app.extensions[SERVICE] = service


def settings() -> AppSettings:
    value: AppSettings = current_app.extensions[SETTINGS]
    return value


def router() -> ModelRouter:
    value: ModelRouter = current_app.extensions[ROUTER]
    return value


def service() -> PredictionService:
    value: PredictionService = current_app.extensions[SERVICE]
    return value
