"""Where the service root's HTTP server listens, and who may press its buttons.

From ``run --metrics ADDR [--metrics-token-file PATH]`` or a tree file's table:

    [metrics]
    address = "127.0.0.1:9464"            # HOST:PORT; [::1]:9464 for IPv6; 9464 alone is
                                          # 127.0.0.1:9464; port 0 picks a free one
    token_file = "/run/user/1000/tree.token"   # optional: enables start/stop/restart

The rules: without a token the server is read-only, and it refuses a non-loopback address
(the tree's status would be open to the network, and nothing would tell its users apart).
"""

from __future__ import annotations

import ipaddress

import attrs

from ..errors import ConfigError

__all__ = ["MetricsOptions", "parse_address", "is_loopback"]


def parse_address(text: str, field: str = "metrics.address") -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``) -> (host, port); a bare ``PORT`` is on 127.0.0.1.
    Raises ConfigError naming `field`."""
    if text.isdigit():
        text = f"127.0.0.1:{text}"  # loopback unless an address is given
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"expected HOST:PORT such as 127.0.0.1:9464, got {text!r}",
                          field=field, value=text)
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


@attrs.frozen(kw_only=True)
class MetricsOptions:
    """The HTTP server's address and its token file (None: read-only). Raises ConfigError
    for a malformed address, or a non-loopback one without a token file."""

    address: str = attrs.field()
    token_file: str | None = None
    host: str = attrs.field(init=False)
    port: int = attrs.field(init=False)

    @address.validator
    def _check(self, _: object, value: str) -> None:
        host, _port = parse_address(value)
        if not is_loopback(host) and self.token_file is None:
            raise ConfigError(f"refusing to serve {value} without a token: a non-loopback "
                              "address needs token_file (--metrics-token-file)",
                              field="metrics.address", value=value)

    def __attrs_post_init__(self) -> None:
        host, port = parse_address(self.address)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
