"""Where a worker child runs: `backend` and, for ``backend="ray"``, its `RayOptions`.

A child with ``backend="ray"`` runs its Worker class as a Ray actor; its supervisor still
forks an ordinary local process for it (the Ray bridge, `runtime.raybridge`), so strategies,
intensity, backoff, circuits and telemetry treat it exactly like a local child. This module
only validates the options; nothing here imports Ray (a tree without Ray children never
loads it).

    child("model", Model, backend="ray", ray_options={"num_cpus": 1, "resources": {"gpu_box": 1}})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._validate import check_bool, check_choice, check_number
from .errors import ConfigError

__all__ = ["BACKENDS", "RayOptions", "ray_options", "check_backend"]

BACKENDS = ("local", "ray")
# Ray's own names for the strategies that take no argument; node affinity is `node_id`.
SCHEDULING = ("DEFAULT", "SPREAD")


@attrs.frozen(kw_only=True)
class RayOptions:
    """How the actor of a ``backend="ray"`` child is placed on the cluster.

    `num_cpus`, `num_gpus`, `memory` (bytes) and `resources` ({name: amount}) are Ray's
    resource requests; `runtime_env` is Ray's runtime environment (the bridge adds the
    tree's import path to its ``env_vars`` PYTHONPATH so the Worker class imports on the
    cluster's workers); `scheduling_strategy` is ``"DEFAULT"`` or ``"SPREAD"``; `node_id`
    pins the actor to one node (node affinity; `soft` lets Ray place it elsewhere when that
    node is gone). `start_timeout`: seconds to join the cluster (past it: a start failure,
    connection_error), then seconds the actor has to be scheduled and finish `init` (past
    it: a start failure, resource_error; an actor that asks for more than the cluster has
    stays pending forever otherwise).
    """

    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: float | None = None
    resources: Mapping[str, float] | None = None
    runtime_env: Mapping[str, Any] | None = None
    scheduling_strategy: str = "DEFAULT"
    node_id: str | None = None
    soft: bool = False
    start_timeout: float = 60.0

    def __attrs_post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus", "memory"):
            check_number(f"ray_options.{name}", getattr(self, name), minimum=0,
                         allow_none=True)
        if self.resources is not None:
            if not isinstance(self.resources, Mapping):
                raise ConfigError(f"expected a table of name = amount, got "
                                  f"{self.resources!r}", field="ray_options.resources",
                                  value=self.resources)
            for name, amount in self.resources.items():
                if not isinstance(name, str) or not name:
                    raise ConfigError(f"expected a resource name, got {name!r}",
                                      field="ray_options.resources", value=name)
                check_number(f"ray_options.resources.{name}", amount, minimum=0)
            object.__setattr__(self, "resources", dict(self.resources))
        if self.runtime_env is not None:
            if not isinstance(self.runtime_env, Mapping):
                raise ConfigError(f"expected a table, got {self.runtime_env!r}",
                                  field="ray_options.runtime_env", value=self.runtime_env)
            object.__setattr__(self, "runtime_env", dict(self.runtime_env))
        check_choice("ray_options.scheduling_strategy", self.scheduling_strategy, SCHEDULING)
        if self.node_id is not None and (not isinstance(self.node_id, str) or
                                         not self.node_id):
            raise ConfigError(f"expected a node id (hex string), got {self.node_id!r}",
                              field="ray_options.node_id", value=self.node_id)
        if self.node_id is not None and self.scheduling_strategy != "DEFAULT":
            raise ConfigError("node_id pins the actor to a node; it cannot be combined with "
                              f"scheduling_strategy={self.scheduling_strategy!r}",
                              field="ray_options.node_id", value=self.node_id)
        check_bool("ray_options.soft", self.soft)
        check_number("ray_options.start_timeout", self.start_timeout, minimum=0, strict=True)


_KEYS = tuple(a.name for a in attrs.fields(RayOptions))


def ray_options(value: Any) -> RayOptions | None:
    """A `RayOptions` from itself, a mapping of its fields, or None; raises ConfigError."""
    if value is None or isinstance(value, RayOptions):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a table of Ray options, got {value!r}",
                          field="ray_options", value=value)
    unknown = {key: v for key, v in value.items() if key not in _KEYS}
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise ConfigError(f"unknown key {key!r}; expected one of {', '.join(_KEYS)}",
                          field=f"ray_options.{key}", value=unknown[key])
    return RayOptions(**value)


def check_backend(spec: Any) -> None:
    """The backend and the options that go with it, on a built ChildSpec."""
    check_choice("backend", spec.backend, BACKENDS)
    if spec.backend != "ray":
        if spec.ray_options is not None:
            raise ConfigError("ray_options is only for backend='ray'", field="ray_options",
                              value=spec.ray_options)
        return
    # What the bridge cannot honour is refused here, not silently ignored.
    if callable(getattr(spec.worker_class, "run", None)):
        raise ConfigError("a Worker with run() cannot use backend='ray' (an actor serves "
                          "commands only)", field="backend", value="ray")
    for field, instead in (("max_memory_mb", "ray_options.memory"),
                           ("max_calls", None)):
        if getattr(spec, field) is not None:
            hint = f"; use {instead}" if instead else ""
            raise ConfigError(f"{field} is not supported with backend='ray'{hint}",
                              field=field, value=getattr(spec, field))
