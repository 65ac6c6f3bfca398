"""A client of the running gateway's admin endpoint, for commands that act on the live process.

The address and token come from the same config as `gateway run` (`admin.host`, `admin.port`,
`admin.token`); a wildcard host (0.0.0.0, ::) is reached on loopback. `url` overrides the
address (e.g. one worker of `gateway run --workers N`, whose port is `admin.port + i`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from gateway.settings import GatewaySettings

_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class AdminUnreachable(Exception):
    """Nothing answers at the admin address: the gateway is not running (or listens elsewhere)."""


class AdminError(Exception):
    """The endpoint answered with an error; the message is its explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def admin_url(settings: GatewaySettings) -> str:
    """The base URL of the admin endpoint of a gateway running with `settings`."""
    admin = settings.admin
    if not admin.enabled:
        raise AdminError(0, "the admin endpoint is disabled in this config (admin.enabled: false)")
    if not admin.port:
        raise AdminError(0, "admin.port is 0 (a random port): pass the address with --admin-url")
    host = _WILDCARD.get(admin.host, admin.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{admin.port}"


def post(settings: GatewaySettings, path: str, payload: dict[str, Any], url: str | None, timeout: float) -> Any:
    """POST `payload` as JSON; return the decoded JSON answer.

    Raises AdminUnreachable when nothing listens, AdminError for an error answer.
    """
    base = (url or admin_url(settings)).rstrip("/")
    headers = {"Content-Type": "application/json"}
    if settings.admin.token is not None:
        headers["Authorization"] = f"Bearer {settings.admin.token.get_secret_value()}"
    request = urllib.request.Request(base + path, data=json.dumps(payload).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise AdminError(exc.code, _explain(exc.code, exc.read())) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError | FileNotFoundError):
            raise AdminUnreachable(
                f"no gateway answers at {base} (is `gateway run` running with this config?)"
            ) from None
        raise AdminError(0, f"cannot reach the gateway at {base}: {reason}") from None
    except (TimeoutError, ConnectionError) as exc:
        raise AdminError(0, f"the gateway at {base} did not answer in {timeout:g} s: {exc}") from None


def _explain(status: int, body: bytes) -> str:
    if status == 401:
        return "the gateway refused the admin token (admin.token in the config, or GATEWAY_ADMIN__TOKEN)"
    text = body.decode(errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    if status in (404, 405):
        return f"this gateway does not serve the route (an older version?): HTTP {status} {text}"
    return f"HTTP {status}: {text}"
