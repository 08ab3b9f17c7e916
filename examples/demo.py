"""A demo tree: a counter, a nested job supervisor, a crash-on-demand echo worker.

    python examples/demo.py

It starts the tree, makes a few calls, SIGKILLs a worker, shows the supervisor restarting
it (telemetry events are printed as they arrive), then shuts the tree down.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import supervisor  # noqa: E402
from examples.workers import Counter  # noqa: E402
from supervisor import Supervisor, child, telemetry  # noqa: E402
from workers.echo import Echo  # noqa: E402

TREE = Supervisor("root", strategy="one_for_one", max_restarts=3, max_seconds=5.0, children=[
    child("counter", Counter, kwargs={"start": 10}),
    Supervisor("jobs", strategy="simple_one_for_one",
               template=child("job", Echo, restart="transient")),
    child("echo", Echo),
])


def show(event, measurements, metadata):
    print(f"  event {'.'.join(event[1:]):<16} {metadata['path']:<10} pid={metadata['pid']} "
          f"reason={metadata.get('reason')}", flush=True)


def main() -> None:
    telemetry.attach("demo", [("supervisor", "child")], show)
    restarted = threading.Event()
    telemetry.attach("demo-wait", [("supervisor", "child", "restarted")],
                     lambda *_: restarted.set())
    with supervisor.start(TREE) as app:
        print("counter.incr(5) ->", app.call("counter", "incr", 5))
        print("proxy incr(5)   ->", app.worker("counter").incr(5))
        job = app.start_child("jobs", args=["job says: "])
        print(f"started {job}; echo ->", app.call(f"jobs/{job}", "echo", "hi"))
        pid = app.call("echo", "pid")
        print(f"kill -9 echo (pid {pid})")
        os.kill(pid, signal.SIGKILL)
        restarted.wait(10)
        print("echo answers again from pid", app.call("echo", "pid"))
        for info in app.which_children():
            print(f"  {info.id:<8} {info.kind:<10} {info.state:<8} pid={info.pid} "
                  f"restarts={info.restarts}")
    print("tree stopped:", app.wait())


if __name__ == "__main__":
    main()
