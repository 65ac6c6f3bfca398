"""Topic authorisation: which topics an identity may publish to and subscribe to.

Rules are MQTT filters from `AclConfig`, with `{username}` replaced by the identity's name
(a name never contains `/`, `+` or `#`: `passwords.username_problem`, so it stays one
literal level). Guarantees:
* publish: allowed when the topic matches one of the role's publish filters.
* subscribe: allowed only when every topic the requested filter can match is matched by one
  allowed filter (`devices/a/+` is within `devices/a/#`; `devices/+/x` is not within it).
* receive (a message forwarded to a subscriber): the subscribe rules applied to the topic.
* Anonymous identities (not `restricted`) are allowed everything; filters starting with a
  wildcard never match topics starting with `$` (MQTT 4.7.2).
"""

from __future__ import annotations

from gateway.security.config import AclConfig
from gateway.security.identity import Identity


def topic_matches(topic: str, topic_filter: str) -> bool:
    """MQTT matching of a topic name (no wildcards) against a filter."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    t = topic.split("/")
    f = topic_filter.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(t) == len(f)


def filter_within(requested: str, allowed: str) -> bool:
    """True when every topic `requested` can match is also matched by `allowed`."""
    if requested.startswith("$") and allowed[:1] in ("+", "#"):
        return False
    r = requested.split("/")
    a = allowed.split("/")
    for i, level in enumerate(a):
        if level == "#":
            return True
        if i >= len(r):
            return False
        if level == "+":
            if r[i] == "#":
                return False
            continue
        if r[i] != level:
            return False
    return len(r) == len(a)


class Acl:
    def __init__(self, config: AclConfig) -> None:
        self._rules = {
            ("device", "publish"): config.publish,
            ("device", "subscribe"): config.subscribe,
            ("operator", "publish"): config.operator_publish,
            ("operator", "subscribe"): config.operator_subscribe,
        }

    def _filters(self, identity: Identity, action: str) -> list[str]:
        return [f.replace("{username}", identity.name) for f in self._rules[(identity.role, action)]]

    def may_publish(self, identity: Identity, topic: str) -> bool:
        if not identity.restricted:
            return True
        return any(topic_matches(topic, f) for f in self._filters(identity, "publish"))

    def may_subscribe(self, identity: Identity, topic_filter: str) -> bool:
        if not identity.restricted:
            return True
        return any(filter_within(topic_filter, f) for f in self._filters(identity, "subscribe"))

    def may_receive(self, identity: Identity, topic: str) -> bool:
        if not identity.restricted:
            return True
        return any(topic_matches(topic, f) for f in self._filters(identity, "subscribe"))
