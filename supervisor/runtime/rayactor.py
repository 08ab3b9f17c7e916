"""The actor of a ``backend="ray"`` child as Ray sees it: its name, its placement, and
how its death reads in our categories.

Pure helpers for the bridge (`runtime.raybridge`): nothing here imports Ray at module
level, so they can be tested without a cluster.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

__all__ = ["NAMESPACE", "actor_name", "classify", "actor_options", "import_path",
           "describe_request"]

NAMESPACE = "otp-supervisor"  # the Ray namespace of every actor a tree creates
# Words Ray puts in the death cause of an actor killed for memory (its memory monitor, or
# a worker exit of type NODE_OUT_OF_MEMORY). The generic "worker died" text only lists
# the OOM killer as one possible cause, so it is not matched.
_OOM_MARKERS = ("NODE_OUT_OF_MEMORY", "running low on memory", "OutOfMemoryError")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def actor_name(path: str, bridge_pid: int) -> str:
    """The actor's name in `NAMESPACE`: unique per bridge process, readable by people."""
    return f"{path}@{bridge_pid}"


def classify(exc: BaseException) -> tuple[str, str, str, str]:
    """(category, type, message, traceback) for the error that ended an actor.

    ``__init__`` raising -> initialization_error with the remote type, message and
    traceback; out of memory on its node -> resource_error; anything else (ray.kill, its
    process killed or exited, its node lost, unavailable) -> connection_error.
    """
    kind = type(exc).__name__
    text = _ANSI.sub("", str(exc))
    if getattr(exc, "actor_init_failed", False):
        remote_type, message = kind, text
        for line in reversed(text.strip().splitlines()):
            head, sep, tail = line.partition(": ")
            if sep and head.replace(".", "").replace("_", "").isalnum():
                remote_type, message = head, tail
                break
        return "initialization_error", remote_type, message, text
    if any(marker in text for marker in _OOM_MARKERS):
        return "resource_error", kind, text, ""
    return "connection_error", kind, text, ""


def actor_options(spec: Any, path: str) -> dict[str, Any]:
    """Ray's `.options(...)` for the actor of `spec`: our placement, Ray's restarts off."""
    opts: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0,
                            "name": actor_name(path, os.getpid()), "namespace": NAMESPACE}
    ray_opts = spec.ray_options
    runtime_env: dict[str, Any] = {}
    if ray_opts is not None:
        for field in ("num_cpus", "num_gpus", "memory", "resources"):
            value = getattr(ray_opts, field)
            if value is not None:
                opts[field] = value
        runtime_env = dict(ray_opts.runtime_env or {})
        if ray_opts.node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                node_id=ray_opts.node_id, soft=ray_opts.soft)
        elif ray_opts.scheduling_strategy != "DEFAULT":
            opts["scheduling_strategy"] = ray_opts.scheduling_strategy
    # The Worker class must import on the cluster's workers, whose path holds only Ray's
    # own entries: the tree's import path (its `directory`, the caller's script directory)
    # goes with the actor. The user's own PYTHONPATH entries come first.
    env_vars = dict(runtime_env.get("env_vars") or {})
    ours = [p for p in import_path() if p not in env_vars.get("PYTHONPATH", "").split(":")]
    env_vars["PYTHONPATH"] = os.pathsep.join(
        [p for p in (env_vars.get("PYTHONPATH"),) if p] + ours)
    runtime_env["env_vars"] = env_vars
    opts["runtime_env"] = runtime_env
    return opts


def import_path() -> list[str]:
    """This process's import path without the interpreter's own directories."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = []
    for entry in sys.path:
        entry = os.path.realpath(entry or os.getcwd())
        if not os.path.isdir(entry) or entry in paths:
            continue
        if any(entry == p or entry.startswith(p + os.sep) for p in prefixes):
            continue
        paths.append(entry)
    return paths


def describe_request(options: Any) -> str:
    if options is None:
        return "default resources"
    asked = {f: getattr(options, f) for f in ("num_cpus", "num_gpus", "memory", "resources",
                                              "node_id") if getattr(options, f) is not None}
    return ", ".join(f"{k}={v}" for k, v in asked.items()) or "default resources"
