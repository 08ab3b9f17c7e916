"""A local Ray cluster for a tree that has Ray children and names no cluster.

The root supervisor adds one child in front of its own: ``ray-head``, an external program
running ``ray start --head --block`` on free ports, its state under a private temporary
directory, usage stats and dashboard off. So the head is supervised like any program (its
output is logged, a crash is a failure of that child, `status` shows it), its daemons stay
in its process group (the program's stop ends the whole group), and the Ray children join
it through the root's `ray_address`. Their bridges wait for the head within their
`start_timeout` (joining retries until the head answers), so nothing polls here.

Nothing happens when a `ray_address` is set on the root, when the root inherited a
`RAY_ADDRESS`, when no child anywhere has ``backend="ray"``, or when Ray is not installed
(the Ray children then fail their start saying so).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

import attrs

from ..specs import ChildSpec, SupervisorSpec, program

__all__ = ["LocalRay", "HEAD_ID"]

HEAD_ID = "ray-head"
_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Keep 127.0.0.1 as given (Ray otherwise rewrites it to the host's address).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def _uses_ray(spec: Any) -> bool:
    if isinstance(spec, ChildSpec):
        return spec.backend == "ray"
    if isinstance(spec, SupervisorSpec):
        templates = [spec.template, getattr(spec, "worker_template", None)]
        return any(_uses_ray(c) for c in (*spec.children, *templates) if c is not None)
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRay:
    """The root's decision, made once: whether its tree gets a local head (`apply`), and
    the head's command, address and directory, kept for the root's life so a reloaded
    file gets the very same head (unchanged, not restarted)."""

    def __init__(self) -> None:
        self.inherited = bool(os.environ.get("RAY_ADDRESS"))
        self.head: Any = None
        self.address: str | None = None
        self.tmp: str | None = None

    def apply(self, spec: Any) -> Any:
        """`spec` with the local head as its first child and its address, when it needs
        one; else `spec` as it is."""
        if self.inherited or spec.ray_address is not None or not _uses_ray(spec) \
                or spec.strategy == "simple_one_for_one":  # no static child may be added
            return spec
        if any(child.id == HEAD_ID for child in spec.children):
            return spec  # the file has a child of that name: leave the tree as written
        cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
        if cli is None or importlib.util.find_spec("ray") is None:
            return spec
        if self.head is None:
            self.tmp = tempfile.mkdtemp(prefix="otpray-")  # short: Ray's socket paths
            port = _free_port()
            self.address = f"127.0.0.1:{port}"
            self.head = program(
                HEAD_ID,
                [cli, "start", "--head", "--block", f"--port={port}",
                 "--node-ip-address=127.0.0.1",
                 "--include-dashboard=false", "--disable-usage-stats",
                 f"--temp-dir={self.tmp}"],
                env=_ENV, stop_signal="SIGINT", shutdown=15.0)
            for key, value in _ENV.items():  # the bridges' side of the same settings
                os.environ.setdefault(key, value)
        return attrs.evolve(spec, children=(self.head, *spec.children),
                            ray_address=self.address)

    def close(self) -> None:
        """The tree stopped (the head with it): remove the head's directory."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
