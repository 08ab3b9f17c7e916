"""The pure helpers of the Ray bridge: how an actor's death reads, how it is placed.

No Ray needed: Ray's errors are matched by their fields and text, so look-alikes do.
"""

from __future__ import annotations

import os

from supervisor import child
from supervisor.runtime.rayactor import actor_options, classify, import_path
from workers.echo import Echo


class ActorDiedError(Exception):
    def __init__(self, text: str, actor_init_failed: bool = False) -> None:
        super().__init__(text)
        self.actor_init_failed = actor_init_failed


class ActorUnavailableError(Exception):
    pass


INIT_FAILED = (
    "The actor died because of an error raised in its creation task, \x1b[36mray::Host."
    "__init__()\x1b[39m (pid=7, ip=127.0.0.1)\n  File \"models.py\", line 3, in init\n"
    "    raise FileNotFoundError('no weights')\nFileNotFoundError: no weights")
KILLED = ("The actor died unexpectedly before finishing this task.\n\tclass_name: Host\n"
          "The actor is dead because it was killed by `ray.kill`.")
WORKER_DIED = ("The actor is dead because its worker process has died. Worker exit type: "
               "SYSTEM_ERROR ... (1) the process was killed by the OOM killer due to high "
               "memory usage, (2) ray stop --force was called")
OOM = ("The actor is dead because its worker process has died. Worker exit type: "
       "NODE_OUT_OF_MEMORY Worker exit detail: Task was killed due to the node running low "
       "on memory.")


def test_init_raising_is_an_initialization_error_with_the_remote_type_and_message():
    category, kind, message, tb = classify(ActorDiedError(INIT_FAILED, actor_init_failed=True))
    assert (category, kind, message) == ("initialization_error", "FileNotFoundError",
                                         "no weights")
    assert "raise FileNotFoundError('no weights')" in tb and "\x1b" not in tb


def test_deaths_of_the_world_are_connection_errors_and_memory_is_a_resource_error():
    assert classify(ActorDiedError(KILLED))[:2] == ("connection_error", "ActorDiedError")
    # The generic text names the OOM killer only as a possible cause: not a memory death.
    assert classify(ActorDiedError(WORKER_DIED))[0] == "connection_error"
    assert classify(ActorDiedError(OOM))[0] == "resource_error"
    assert classify(ActorUnavailableError("unreachable"))[:2] == (
        "connection_error", "ActorUnavailableError")


def test_ray_restarts_are_off_and_the_import_path_goes_with_the_actor():
    spec = child("m", Echo, backend="ray", ray_options={
        "num_cpus": 0.5, "resources": {"accel": 1}, "scheduling_strategy": "SPREAD",
        "runtime_env": {"env_vars": {"PYTHONPATH": "/opt/models", "MODE": "x"}}})
    opts = actor_options(spec, "pool/m-0")
    assert (opts["max_restarts"], opts["max_task_retries"]) == (0, 0)
    assert (opts["num_cpus"], opts["resources"], opts["scheduling_strategy"]) == (
        0.5, {"accel": 1}, "SPREAD")
    assert opts["name"] == f"pool/m-0@{os.getpid()}"
    env = opts["runtime_env"]["env_vars"]
    assert env["MODE"] == "x"
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == "/opt/models"  # the user's own entries first
    assert paths[1:] == import_path()
    here = os.path.realpath(os.getcwd())
    assert here in import_path()  # the tests run from the repository: its root goes along
