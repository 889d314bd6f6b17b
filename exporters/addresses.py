"""Listen and rrdcached addresses: the one parser the config loader (which refuses a
bad address with its line) and the HTTP server (which binds it) share."""

from __future__ import annotations

import ipaddress
import json
import re

_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _show(text: str) -> str:
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def valid_hostname(host: str) -> bool:
    if not host or len(host) > 253 or not host.isascii():
        return False
    return all(_HOSTNAME_LABEL.fullmatch(label) for label in host.removesuffix(".").split("."))


def parse_listen(text: str, *, port_zero: bool = True) -> tuple[str, int]:
    """"127.0.0.1:9717", "[::1]:9717", "localhost:9717" → (host, port).

    `port_zero`: accept port 0 (the kernel picks one; tests bind so). A config wants
    a port Prometheus can be told, and passes False. ValueError with a one-line
    message fit for a config error.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1:].startswith(":"):
            raise ValueError(f'expected "[IPv6]:port", got {_show(text)}')
        host, port_text = text[1:close], text[close + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {_show(host)} in {_show(text)}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f'expected "host:port", got {_show(text)}')
        if ":" in host:
            raise ValueError(f'put an IPv6 address in brackets ("[::1]:9717"), got {_show(text)}')
        if not host:
            raise ValueError(
                f'host missing in {_show(text)} (use "0.0.0.0:PORT" or "[::]:PORT" '
                f"for every interface)"
            )
        if not valid_hostname(host):
            raise ValueError(f"invalid host {_show(host)} in {_show(text)}")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise ValueError(f"invalid port {_show(port_text)} in {_show(text)}")
    port = int(port_text)
    low = 0 if port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port must be {low}..65535, got {port} in {_show(text)}")
    return host, port


def check_rrdcached_address(text: str) -> None:
    """rrdcached's address forms: "" (none), "unix:/path", "/path", "host:port"."""
    if text == "":
        return
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f'"unix:" needs an absolute socket path, got {_show(text)}')
        return
    if text.startswith("/"):
        return
    try:
        parse_listen(text, port_zero=False)
    except ValueError as e:
        raise ValueError(
            f'expected "", "unix:/path", "/path" or "host:port": {e}'
        ) from None
