"""The demo page: ``GET /`` serves a small page to classify an image from a browser.

The page (``app/static/index.html``) and its stylesheet and script are plain files served by
Flask's static handling: no template, no CDN, no external font, so it works offline. It talks
to the same ``POST /predict`` as any client. A strict Content-Security-Policy keeps it that
way: the browser may load nothing and send nothing outside this origin.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

bp = Blueprint("demo", __name__)

PAGE = "index.html"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # The preview is an object URL of the picked file; the favicon is a static SVG.
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


@bp.get("/")
def index() -> Response:
    """The demo page; it holds no data, so it may be exempt from API keys (see app.auth)."""
    response = current_app.send_static_file(PAGE)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response
