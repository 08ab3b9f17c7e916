"""A Ray driver the tests talk to over stdin/stdout (one JSON object per line).

The test process itself never calls `ray.init`: a process that did must never fork, and
the rest of the suite forks. This small process is the tests' hand on the cluster: it
kills actors by name, waits for their death and lists the ones alive.
"""

from __future__ import annotations

import json
import sys
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError

NAMESPACE = "otp-supervisor"


def names() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE)


def wait_dead(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name not in names():
            return True
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
            # `watch` waits behind the bridge's own watch (a group of one) and fails the
            # moment the actor dies: an event, not a poll.
            ray.get(actor.watch.remote(), timeout=max(0.1, deadline - time.monotonic()))
        except (RayActorError, ValueError):  # died, or already gone
            return True
        except GetTimeoutError:
            return False
        except AssertionError:
            # Ray cannot build a handle to an actor it is tearing down right now: look
            # again shortly (its name disappears once it is dead).
            time.sleep(0.1)
    return False


def handle(cmd: dict) -> object:
    op = cmd["op"]
    if op == "kill":
        ray.kill(ray.get_actor(cmd["name"], namespace=NAMESPACE), no_restart=True)
        return True
    if op == "names":
        return names()
    if op == "wait_dead":
        return wait_dead(cmd["name"], cmd.get("timeout", 20.0))
    if op == "ready":
        actor = ray.get_actor(cmd["name"], namespace=NAMESPACE)
        return list(ray.get(actor.ready.remote(), timeout=20)[1:])
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    ray.init(address=sys.argv[1], namespace=NAMESPACE, log_to_driver=False,
             configure_logging=False)
    print(json.dumps({"ok": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = {"ok": True, "value": handle(json.loads(line))}
        except Exception as exc:  # reported to the test, which fails with it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
