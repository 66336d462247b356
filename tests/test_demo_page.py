"""The demo page at ``GET /``: served self-contained, and driven by a real headless browser.

The browser is Debian's ``chromium`` at an explicit path, driven by Playwright; Playwright's
own browser download is never used. The browser tests skip only when that binary is missing
(CI installs it with apt).

``QUEUENET_WRITE_SCREENSHOT=1 python -m pytest tests/test_demo_page.py -k cat`` (or
``python -m tests.test_demo_page --screenshot``) also writes the README's ``docs/demo.png``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from app import create_app
from app.settings import AppSettings
from protocol.settings import RedisSettings
from tests.helpers import ROOT, stop
from tests.live import LiveService
from worker.registry import LoadedModel

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "demo.png"
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
KEY = "demo-page-key-0123456789"
TIMING = re.compile(r"Answered by \S+ version \S+ in \d+ ms")


def solid_png(colour: tuple[int, int, int], size: tuple[int, int] = (24, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --- The page as served (Flask test client, no browser) ----------------------------------


def test_page_is_served_with_its_assets_and_nothing_external(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    html = page.get_data(as_text=True)
    page.close()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(assets) == [
        "/static/demo.css",
        "/static/demo.js",
        "/static/favicon.svg",
    ]
    texts = [html]
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        texts.append(response.get_data(as_text=True))
        response.close()
    for text in texts:  # no CDN, no web font, no absolute URL (an XML namespace is no fetch)
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I)
        assert "@import" not in text and "url(" not in text  # CSS fetches


def test_page_and_assets_need_no_key_but_the_api_does(redis_settings: RedisSettings) -> None:
    application = create_app(AppSettings(redis=redis_settings, api_keys=(KEY,)))
    client = application.test_client()
    try:
        for asset in ("/", "/static/demo.js", "/static/demo.css", "/static/favicon.svg"):
            response = client.get(asset)
            assert response.status_code == 200, asset
            response.close()
        assert client.post("/predict").status_code == 401
        assert client.get("/nope").status_code == 401
        # The open prefix does not open anything else: no way out of the static folder.
        assert client.get("/static/nope").status_code == 404
        for path in ("/static/../predict", "/static/%2e%2e/predict"):
            response = client.post(path, data={"image": (io.BytesIO(solid_png((1, 2, 3))), "a")})
            assert response.status_code in (404, 405), path
        assert client.get("/static/%2e%2e/app/auth.py").status_code == 404
    finally:
        application.extensions["queuenet.backend"].close()


# --- A real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Tab:
    """A page in its own browser context, with every request and page error it saw."""

    page: Page
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def open(self, url: str) -> None:
        self.page.goto(url + "/")
        expect(self.page.locator("h1")).to_contain_text("QueueNet")

    def upload(self, path: Path) -> None:
        self.page.set_input_files("#file", str(path))

    def results(self) -> list[str]:
        return self.page.locator("#results .label").all_inner_texts()

    def assert_only_local(self) -> None:
        """Everything the page fetched came from 127.0.0.1 (or is the picked file itself)."""
        assert self.requests, "no request was recorded"
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in ("blob", "data"):
                continue
            assert parts.scheme == "http" and parts.hostname == "127.0.0.1", url
        assert not self.problems, self.problems


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 900, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    opened = Tab(page)
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("pageerror", lambda error: opened.problems.append(f"page error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or message.type == "warning":
            opened.problems.append(f"console {message.type}: {message.text}")

    page.on("console", on_console)
    yield opened
    context.close()


@dataclass
class TinyService:
    live: LiveService
    url: str
    keyed_url: str


@pytest.fixture(scope="module")
def tiny(
    redis_url: str,
    tiny_model_files: tuple[Path, Path],
    tiny6_model_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TinyService]:
    """Workers of two versions of the 4-colour model (1 serves), an open gunicorn and one that
    wants ``KEY``."""
    live = LiveService(redis_url, tmp_path_factory.mktemp("demo-live"), *tiny_model_files)
    try:
        live.start_worker()
        live.start_worker(
            QUEUENET_MODEL=str(tiny6_model_file),
            QUEUENET_MODEL_NAME="tiny",
            QUEUENET_MODEL_VERSION="2",
        )
        yield TinyService(live, live.start_web(), live.start_web(QUEUENET_API_KEYS=KEY))
    finally:
        live.close()


@pytest.mark.e2e
def test_cat_photo_shows_a_cat_label_and_the_time_taken(
    tab: Tab, live: LiveService, lite0: LoadedModel, model_cache: Path, data_dir: Path
) -> None:
    live.extra_env.update(
        {
            "QUEUENET_MODEL": "efficientnet-lite0",
            "QUEUENET_MODEL_CACHE_DIR": str(model_cache),
            "QUEUENET_BATCH_SIZE": "1",  # one warm-up call: the page sends one image
            "QUEUENET_PREDICT_TIMEOUT_S": "60",
        }
    )
    live.start_worker()
    url = live.start_web()
    tab.open(url)
    tab.upload(data_dir / "chelsea.png")
    page = tab.page
    expect(page.locator("#results li")).to_have_count(5, timeout=60_000)
    labels = tab.results()
    assert labels[0] in CAT_LABELS, (labels, live.logs())
    expect(page.locator("#status")).to_have_text(TIMING)
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#file-name")).to_contain_text("chelsea.png")
    percents = page.locator("#results .percent").all_inner_texts()
    assert all(re.fullmatch(r"(\d+\.\d|< 0\.1)%", p) for p in percents), percents
    expect(page.locator("#error")).to_be_hidden()
    tab.assert_only_local()
    if os.environ.get("QUEUENET_WRITE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.mouse.move(0, 0)  # no hover highlight in the picture
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_a_non_image_shows_the_error_in_words(tab: Tab, tiny: TinyService, tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not a picture\n", encoding="utf-8")
    tab.open(tiny.url)
    tab.upload(fake)
    error = tab.page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("The image could not be read: the data is not an image")
    expect(error).to_contain_text("(HTTP 400 Bad Request)")
    visible = tab.page.locator("body").inner_text()
    assert '{"' not in visible and "invalid_image" not in visible, visible
    assert tab.results() == []
    tab.assert_only_local()


def test_top_k_a_bad_top_k_and_the_keyboard(tab: Tab, tiny: TinyService, tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    red.write_bytes(solid_png((240, 10, 10)))
    page = tab.page
    # Listening before the page opens makes Playwright intercept file choosers from the start;
    # registered only by expect_file_chooser, the key press can win the race and go unseen.
    page.on("filechooser", lambda _: None)
    tab.open(tiny.url)
    page.keyboard.press("Tab")  # the picker is the first thing the keyboard reaches
    assert page.evaluate("document.activeElement.id") == "file"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(red))
    expect(page.locator("#results li")).to_have_count(4)  # top_k 5 > 4 labels: all of them
    assert tab.results()[0] == "red"
    expect(page.locator("#results .index").first).to_have_text("#0")

    page.fill("#top-k", "2")
    page.click("#submit")
    expect(page.locator("#results li")).to_have_count(2)
    expect(page.locator("#status")).to_have_text(TIMING)

    page.fill("#top-k", "9")
    page.press("#top-k", "Enter")  # submits the form
    error = page.locator("#error")
    expect(error).to_contain_text("The request was not accepted: top_k must be a whole number")
    expect(page.locator("#results li")).to_have_count(0)
    tab.assert_only_local()


def test_the_model_picker_lists_each_model_version_and_uses_it(
    tab: Tab, tiny: TinyService, tmp_path: Path
) -> None:
    red = tmp_path / "red.png"
    red.write_bytes(solid_png((240, 10, 10)))
    page = tab.page
    tab.open(tiny.url)
    picker = page.locator("#model")
    expect(picker.locator("option")).to_have_count(4)
    assert picker.locator("option").all_inner_texts() == [
        "the default model (tiny)",
        "tiny (version 1)",
        "tiny version 1",
        "tiny version 2",
    ]
    tab.upload(red)
    expect(page.locator("#status")).to_have_text(re.compile(r"Answered by tiny version 1 in"))
    picker.select_option(label="tiny version 2")  # a change re-classifies the image
    expect(page.locator("#status")).to_have_text(re.compile(r"Answered by tiny version 2 in"))
    assert tab.results()[0] == "red"
    tab.assert_only_local()


def test_the_model_picker_waits_for_the_api_key(tab: Tab, tiny: TinyService) -> None:
    """Behind API keys, GET /models needs the key: the picker fills once one is typed."""
    page = tab.page
    tab.open(tiny.keyed_url)
    expect(page.locator("#model option")).to_have_count(1)
    page.fill("#api-key", KEY)
    page.locator("#api-key").dispatch_event("change")
    expect(page.locator("#model option")).to_have_count(4)


DROP_AND_PASTE = """async ([kind, encoded]) => {
    const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
    const file = new File([bytes], `${kind}.png`, { type: "image/png" });
    const data = new DataTransfer();
    data.items.add(file);
    if (kind === "dropped") {
        const zone = document.getElementById("drop");
        for (const type of ["dragenter", "dragover", "drop"]) {
            const init = { bubbles: true, cancelable: true, dataTransfer: data };
            zone.dispatchEvent(new DragEvent(type, init));
        }
    } else {
        document.body.dispatchEvent(
            new ClipboardEvent("paste", { bubbles: true, cancelable: true, clipboardData: data }));
    }
}"""


def test_drag_and_drop_and_paste(tab: Tab, tiny: TinyService) -> None:
    page = tab.page
    tab.open(tiny.url)
    green = base64.b64encode(solid_png((10, 230, 10))).decode()
    page.evaluate(DROP_AND_PASTE, ["dropped", green])
    expect(page.locator("#results .label").first).to_have_text("green")
    expect(page.locator("#file-name")).to_contain_text("dropped.png")
    expect(page.locator("#drop")).not_to_have_class(re.compile("dragging"))

    blue = base64.b64encode(solid_png((10, 10, 230))).decode()
    page.evaluate(DROP_AND_PASTE, ["pasted", blue])
    expect(page.locator("#results .label").first).to_have_text("blue")
    expect(page.locator("#file-name")).to_contain_text("pasted.png")
    tab.assert_only_local()


def test_api_key_field(tab: Tab, tiny: TinyService, tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    grey.write_bytes(solid_png((128, 128, 128)))
    page = tab.page
    tab.open(tiny.keyed_url)  # the page itself needs no key
    tab.upload(grey)
    error = page.locator("#error")
    expect(error).to_contain_text("An API key is needed: enter a valid key in the API key field")
    expect(error).to_contain_text("HTTP 401")

    page.fill("#api-key", "not-the-key-0123456789")
    page.click("#submit")
    expect(error).to_contain_text("The API key was not accepted")

    page.fill("#api-key", KEY)
    page.click("#submit")
    expect(page.locator("#results .label").first).to_have_text("grey")
    expect(error).to_be_hidden()
    tab.assert_only_local()
    assert KEY not in page.locator("body").inner_text()


def test_a_server_that_went_away_is_reported(tab: Tab, tiny: TinyService, tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    red.write_bytes(solid_png((240, 10, 10)))
    url = tiny.live.start_web()
    tab.open(url)
    process = next(p for p, u in tiny.live.webs if u == url)
    stop(process)
    tab.upload(red)
    error = tab.page.locator("#error")
    expect(error).to_contain_text("Cannot reach the server: check your connection")
    expect(error).to_contain_text(url)


if __name__ == "__main__":
    if sys.argv[1:] != ["--screenshot"]:
        sys.exit("usage: python -m tests.test_demo_page --screenshot")
    os.environ["QUEUENET_WRITE_SCREENSHOT"] = "1"
    sys.exit(pytest.main([__file__, "-q", "-k", "cat", "-p", "no:cacheprovider"]))
