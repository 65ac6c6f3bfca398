"""Topic routes: pattern validation, matching, subscription filters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.ingress.topics import RouteConfig, TopicRouter


def route(pattern: str, schema: str = "env", **tags: str) -> RouteConfig:
    return RouteConfig.model_validate({"pattern": pattern, "schema": schema, "tags": tags})


def test_schema_key_is_accepted_by_alias_and_by_name() -> None:
    assert route("a/{device_id}").schema_name == "env"
    assert RouteConfig.model_validate({"pattern": "a", "schema_name": "x"}).schema_name == "x"
    assert RouteConfig.model_validate({"pattern": "a", "schema": "x"}).model_dump(by_alias=True)["schema"] == "x"


def test_unknown_route_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RouteConfig.model_validate({"pattern": "a", "schema": "x", "qos": 1})


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "pattern is empty"),
        ("a//b", r"level 2 \(''\) of pattern 'a//b' is empty"),
        ("/a", r"level 1 \(''\) of pattern '/a' is empty"),
        ("a/", r"level 2 \(''\) of pattern 'a/' is empty"),
        ("a/{1x}", "placeholder name '1x' must start with a letter or '_'"),
        ("a/{}", "placeholder name '' must start with a letter"),
        ("a/{dev-id}", "placeholder name 'dev-id'"),
        ("{a}/b/{a}", r"level 3 \('\{a\}'\) of pattern '\{a\}/b/\{a\}': placeholder \{a\} appears more than once"),
        ("a/#/b", "'#' is only allowed as the last level"),
        ("a+b/c", r"level 1 \('a\+b'\).*'\+' and '#' must fill a whole level"),
        ("a/b#", "'\\+' and '#' must fill a whole level"),
        ("a/{x}y", r"a placeholder must fill a whole level, written as \{name\}"),
        ("a/{x", "a placeholder must fill a whole level"),
        ("a/{{x}}", "a placeholder must fill a whole level"),
    ],
)
def test_bad_patterns_are_refused_with_a_clear_message(pattern: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        route(pattern)


def test_static_tags_may_not_be_device_id_or_clash_with_placeholders() -> None:
    with pytest.raises(ValidationError, match="static tag 'device_id' is not allowed"):
        route("a/{x}", device_id="d")
    with pytest.raises(ValidationError, match=r"static tag 'site' clashes with placeholder \{site\}"):
        route("s/{site}", site="north")
    with pytest.raises(ValidationError, match="keys and values must be non-empty"):
        route("s/{site}", fleet="")


def test_match_returns_route_and_placeholder_values() -> None:
    router = TopicRouter([route("sites/{site}/devices/{device_id}/{stream}", fleet="n"), route("devices/{device_id}")])
    matched = router.match("sites/s1/devices/d-7/telemetry")
    assert matched is not None
    assert matched[0].pattern == "sites/{site}/devices/{device_id}/{stream}"
    assert matched[1] == {"site": "s1", "device_id": "d-7", "stream": "telemetry"}
    assert router.match("devices/d 1") == (router.routes[1], {"device_id": "d 1"})


@pytest.mark.parametrize(
    "topic",
    ["devices", "devices/d1/extra", "device/d1", "Devices/d1", "devices/", "", "/devices/d1", "devices/d1/"],
)
def test_non_matching_topics(topic: str) -> None:
    assert TopicRouter([route("devices/{device_id}")]).match(topic) is None


def test_placeholders_do_not_match_empty_levels_but_plus_does() -> None:
    assert TopicRouter([route("a/{x}/c")]).match("a//c") is None
    assert TopicRouter([route("a/+/c")]).match("a//c") == (route("a/+/c"), {})


def test_first_matching_route_wins_in_configuration_order() -> None:
    specific, general = route("devices/special/{stream}", "special"), route("devices/{device_id}/{stream}")
    router = TopicRouter([specific, general])
    assert router.match("devices/special/x") == (specific, {"stream": "x"})
    assert router.match("devices/other/x") == (general, {"device_id": "other", "stream": "x"})
    reversed_router = TopicRouter([general, specific])
    assert reversed_router.match("devices/special/x") == (general, {"device_id": "special", "stream": "x"})


def test_hash_matches_the_parent_level_and_anything_below() -> None:
    tail = route("legacy/{kind}/#")
    router = TopicRouter([route("a/b/c/d/e"), tail])
    assert router.match("legacy/k") == (tail, {"kind": "k"})
    assert router.match("legacy/k/1") == (tail, {"kind": "k"})
    assert router.match("legacy/k/1/2/3/4/5/6/7/8") == (tail, {"kind": "k"})
    assert router.match("legacy") is None
    assert router.match("other/k/1") is None


def test_wildcard_first_levels_do_not_match_dollar_topics() -> None:
    everything, sys = route("#"), route("$SYS/{what}")
    router = TopicRouter([everything, route("{x}/load"), route("+/uptime")])
    assert router.match("$SYS/load") is None
    assert router.match("$SYS/uptime") is None
    assert router.match("$SYS") is None
    assert router.match("anything/at/all") == (everything, {})
    assert TopicRouter([sys]).match("$SYS/load") == (sys, {"what": "load"})


def test_literals_are_not_regular_expressions() -> None:
    router = TopicRouter([route("a.b/(x)*/{device_id}")])
    assert router.match("a.b/(x)*/d1") is not None
    assert router.match("axb/(x)*/d1") is None
    assert router.match("a.b/xx/d1") is None


def test_subscription_filters_replace_placeholders_and_drop_duplicates() -> None:
    router = TopicRouter(
        [
            route("sites/{site}/devices/{device_id}/telemetry"),
            route("devices/{device_id}/telemetry"),
            route("devices/{x}/telemetry", "other"),
            route("legacy/+/#"),
            route("#"),
        ]
    )
    assert router.subscription_filters() == [
        "sites/+/devices/+/telemetry",
        "devices/+/telemetry",
        "legacy/+/#",
        "#",
    ]


def test_empty_router_matches_nothing() -> None:
    router = TopicRouter([])
    assert router.match("a/b") is None
    assert router.subscription_filters() == []


@given(st.text(alphabet=st.sampled_from("ab/+#${}$ \x00é"), max_size=30))
def test_match_never_raises_and_agrees_with_the_level_count(topic: str) -> None:
    router = TopicRouter([route("a/{x}"), route("{y}/b/#"), route("+/+/+")])
    matched = router.match(topic)
    if matched is not None:
        values = matched[1]
        assert all(value and "/" not in value for value in values.values())
        if matched[0].pattern == "a/{x}":
            assert topic == f"a/{values['x']}"
