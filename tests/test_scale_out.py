"""Past one Redis, with real servers under load: three independent shards with one killed
(``kill -9``) and restarted; a Redis Cluster (3 masters, 3 replicas) whose master is killed
and replaced by its replica; a Sentinel set (master, replica, 3 sentinels) failing over.

Each test prints the requests sent, answered by status, lost (no answer at all: must be 0)
and the error window (first to last non-200 answer, in seconds), and checks that the service
healed without restarting any of its processes.
"""

from __future__ import annotations

import io
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.live import LiveService
from tests.redis_servers import Cluster, SentinelSet, Server, require_redis_tools

PREDICT_TIMEOUT_S = 8
CLIENTS = 8
COLOURS = {"red": (240, 10, 10), "green": (10, 240, 10), "blue": (10, 10, 240)}


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Record:
    sent_at_s: float
    done_at_s: float
    status: int | None
    """None: no HTTP answer at all (a lost request)."""


@dataclass
class SteadyLoad:
    """Clients in a closed loop on ``url`` until stopped; every request is recorded."""

    url: str
    records: list[Record] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    threads: list[threading.Thread] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def client(self, index: int) -> None:
        session = requests.Session()
        colours = list(COLOURS)
        n = index
        while not self.stop.is_set():
            colour = colours[n % len(colours)]
            n += 1
            sent = self.now()
            try:
                response = session.post(
                    f"{self.url}/predict",
                    files={"image": png(COLOURS[colour])},
                    timeout=PREDICT_TIMEOUT_S + 10,
                )
                status: int | None = response.status_code
                if status == 200:
                    assert response.json()["predictions"][0]["label"] == colour
            except requests.RequestException:
                status = None
            self.records.append(Record(sent, self.now(), status))
            if status == 503:
                time.sleep(0.05)  # a client backs off a little on 503

    def start(self) -> None:
        self.threads = [
            threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=PREDICT_TIMEOUT_S + 20)


def report(title: str, load: SteadyLoad, events: dict[str, float]) -> dict[str, float]:
    records = load.records
    statuses = Counter(r.status for r in records)
    errors = [r for r in records if r.status != 200]
    window = (max(r.done_at_s for r in errors) - min(r.done_at_s for r in errors)) if errors else 0
    figures = {
        "sent": len(records),
        "ok": statuses[200],
        "lost": statuses[None],
        "error_window_s": round(window, 2),
    }
    by_status = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=str))
    marks = ", ".join(f"{name} at {at:.1f}s" for name, at in events.items())
    print(
        f"\n{title}: sent {len(records)}, answered by status {{{by_status}}}, lost "
        f"{statuses[None]}, error window {window:.2f}s ({marks})"
    )
    return figures


def assert_healed(load: SteadyLoad, since_s: float) -> None:
    """Everything sent after ``since_s`` was answered 200: the service healed by itself."""
    late = [r for r in load.records if r.sent_at_s >= since_s]
    assert late, "no request was sent after the service should have healed"
    assert Counter(r.status for r in late) == {200: len(late)}, Counter(r.status for r in late)


@contextmanager
def service_under_load(
    redis_url: str, tiny_model_files: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[LiveService, list[subprocess.Popen[bytes]], SteadyLoad]]:
    """Two workers and two web processes on ``redis_url``, 8 clients at work for 4 s."""
    live = LiveService(redis_url, tmp_path, *tiny_model_files)
    live.extra_env["QUEUENET_PREDICT_TIMEOUT_S"] = str(PREDICT_TIMEOUT_S)
    try:
        workers = [live.start_worker(), live.start_worker()]
        load = SteadyLoad(live.start_web(QUEUENET_WEB_PROCESSES="2"))
        load.start()
        time.sleep(4)
        yield live, workers, load
    finally:
        live.close()


def assert_failover_lost_nothing(
    title: str,
    events: dict[str, float],
    healed_since_s: float,
    served: tuple[LiveService, list[subprocess.Popen[bytes]], SteadyLoad],
) -> None:
    """Every request answered (200, or a quick 503/504, never a 500 or no answer), all 200
    from ``healed_since_s`` on, and no worker died."""
    live, workers, load = served
    figures = report(title, load, events)
    assert figures["lost"] == 0
    assert set(Counter(r.status for r in load.records)) <= {200, 503, 504}
    assert_healed(load, healed_since_s)
    assert all(w.poll() is None for w in workers), live.logs()


def web_shards(live: LiveService) -> Counter[tuple[str, str]]:
    """(status, shard) of every request line in the web logs."""
    text = "".join(p.read_text(errors="replace") for p in live.workdir.glob("*-web.log"))
    return Counter(re.findall(r"request POST /predict status=(\d+) .* shard=(\S+) ", text))


@pytest.fixture
def redis_tools() -> None:
    require_redis_tools()


# --- three independent shards -----------------------------------------------------------------


@pytest.fixture
def three_servers(redis_tools: None, tmp_path: Path) -> Iterator[list[Server]]:
    servers = [Server(tmp_path / f"shard-{i}") for i in range(3)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


def test_three_shards_one_killed_and_restarted_costs_only_its_requests(
    three_servers: list[Server], tiny_model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    urls = ",".join(server.url for server in three_servers)
    with service_under_load(urls, tiny_model_files, tmp_path) as served:
        live, _, load = served
        three_servers[1].kill()
        killed = load.now()
        time.sleep(5)
        three_servers[1].start()  # the same port, empty: Redis keeps nothing on disk here
        restarted = load.now()
        time.sleep(8)
        load.finish()
        events = {"killed": killed, "restarted": restarted}
        title = "three shards, shard 1 killed and restarted"
        assert_failover_lost_nothing(title, events, restarted + 4, served)
        outage = [r for r in load.records if killed + 1.5 <= r.sent_at_s < restarted]
        # While shard 1 is down, new requests go to the other two shards.
        assert outage and sum(r.status == 200 for r in outage) >= 0.9 * len(outage)
        # After its restart shard 1 answers requests again, without restarting anything.
        assert web_shards(live)[("200", "1")] > 0
        assert all(p.poll() is None for p, _ in live.webs)


# --- Redis Cluster ----------------------------------------------------------------------------


@pytest.fixture
def cluster(redis_tools: None, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_redis_cluster_master_killed_its_replica_takes_over(
    cluster: Cluster, tiny_model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    with service_under_load(cluster.url, tiny_model_files, tmp_path) as served:
        live, _, load = served
        # The three shards of tiny@1 sit on the three masters (their tags spread the slots).
        queues = [live.keys_for_cluster().version("tiny", "1", i).queue() for i in range(3)]
        assert len({cluster.master_of(q).port for q in queues}) == 3
        victim = cluster.master_of(queues[1])
        victim.kill()
        killed = load.now()
        time.sleep(15)  # node timeout 2 s, then the replica's election
        load.finish()
        assert cluster.master_of(queues[1]).port != victim.port
        events = {"killed": killed, "ended": load.now()}
        assert_failover_lost_nothing("Redis Cluster, a master killed", events, killed + 10, served)


# --- Sentinel ---------------------------------------------------------------------------------


@pytest.fixture
def sentinels(redis_tools: None, tmp_path: Path) -> Iterator[SentinelSet]:
    watched = SentinelSet(tmp_path / "sentinel")
    try:
        watched.start()
        yield watched
    finally:
        watched.stop()


def test_sentinel_fails_over_and_the_service_follows(
    sentinels: SentinelSet, tiny_model_files: tuple[Path, Path], tmp_path: Path
) -> None:
    with service_under_load(sentinels.url, tiny_model_files, tmp_path) as served:
        load = served[2]
        assert sentinels.master is not None and sentinels.replica is not None
        sentinels.master.kill()
        killed = load.now()
        time.sleep(15)  # down after 1 s, then the sentinels' vote and the promotion
        load.finish()
        assert sentinels.current_master_port() == sentinels.replica.port
        events = {"killed": killed, "ended": load.now()}
        assert_failover_lost_nothing("Sentinel, the master killed", events, killed + 10, served)
