"""The catalog of models and versions, their routes and the default model, in a real Redis."""

from __future__ import annotations

import itertools

import pytest
import redis

from protocol.keys import Keys
from protocol.routing import ModelDirectory, Route, RoutingError


@pytest.fixture
def directory(rclient: redis.Redis, keys: Keys) -> ModelDirectory:
    return ModelDirectory(rclient, keys)


def test_the_first_version_of_a_model_is_promoted_and_the_first_model_is_the_default(
    directory: ModelDirectory,
) -> None:
    assert directory.catalog().versions == {} and directory.catalog().default is None
    directory.announce("lite0", "1")
    directory.announce("lite0", "2")  # a later version waits to be promoted
    directory.announce("lite2", "7")
    catalog = directory.catalog()
    assert catalog.versions == {"lite0": ("1", "2"), "lite2": ("7",)}
    assert catalog.routes == {"lite0": Route("1"), "lite2": Route("7")}
    assert catalog.default == "lite0"
    directory.announce("lite0", "2")  # announcing again (every heartbeat) changes nothing
    assert directory.catalog().routes["lite0"] == Route("1")


def test_versions_sort_numerically(directory: ModelDirectory) -> None:
    for version in ("10", "2", "1", "beta"):
        directory.announce("m", version)
    assert directory.catalog().versions["m"] == ("1", "2", "10", "beta")


def test_promote_canary_and_default(directory: ModelDirectory) -> None:
    for model, version in (("a", "1"), ("a", "2"), ("a", "3"), ("b", "1")):
        directory.announce(model, version)
    assert directory.canary("a", "2", 10) == Route("1", "2", 10.0)
    assert directory.catalog().routes["a"] == Route("1", "2", 10.0)
    assert directory.promote("a", "2") == Route("2")  # promoting ends the canary
    assert directory.canary("a", "3", 25.5) == Route("2", "3", 25.5)
    assert directory.canary("a", "3", 0) == Route("2")  # 0 % ends it
    directory.set_default("b")
    assert directory.catalog().default == "b"


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda d: d.promote("nope", "1"), "no model 'nope'; a (versions 1, 2)"),
        (lambda d: d.promote("a", "9"), "no version '9' of a; its versions: 1, 2"),
        (lambda d: d.canary("a", "2", 101), "0 to 100 percent"),
        (lambda d: d.canary("a", "1", 10), "already the serving version"),
        (lambda d: d.set_default("nope"), "no model 'nope'"),
    ],
)
def test_routes_to_what_does_not_exist_are_refused(
    directory: ModelDirectory, call: object, words: str
) -> None:
    directory.announce("a", "1")
    directory.announce("a", "2")
    with pytest.raises(RoutingError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call(directory)  # type: ignore[operator]
    assert directory.catalog().routes["a"] == Route("1")


def test_a_canary_takes_its_share_of_draws() -> None:
    route = Route("1", "2", 10.0)
    draws = itertools.cycle(i / 1000 for i in range(1000))  # evenly spread over [0, 1)
    picks = [route.pick(lambda: next(draws)) for _ in range(1000)]
    assert picks.count("2") == 100
    assert Route("1").pick(lambda: 0.0) == "1"


def test_a_retired_version_can_be_forgotten_but_not_a_live_or_routed_one(
    directory: ModelDirectory, rclient: redis.Redis, keys: Keys
) -> None:
    from protocol.messages import ModelCard
    from protocol.workers import WorkerRegistry

    for version in ("1", "2"):
        directory.announce("a", version)
        registry = WorkerRegistry(rclient, keys.version("a", version))
        registry.publish_card(ModelCard("a", version, 8, 4, fingerprint=f"a{version}"))
    live = WorkerRegistry(rclient, keys.version("a", "2"))
    live.beat("w", b"{}", ttl_s=30, owner_token="t")
    with pytest.raises(RoutingError, match="still takes its requests"):
        directory.forget("a", "1")  # the serving version
    with pytest.raises(RoutingError, match="1 live worker"):
        directory.forget("a", "2")
    live.retire("w")
    directory.forget("a", "2")
    assert directory.catalog().versions == {"a": ("1",)}
    assert WorkerRegistry(rclient, keys.version("a", "2")).card() is None
    directory.forget("a", "1")  # the last version: the route and the default go too
    catalog = directory.catalog()
    assert (catalog.versions, catalog.routes, catalog.default) == ({}, {}, None)
