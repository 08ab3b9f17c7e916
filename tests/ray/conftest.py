"""A local Ray cluster for each Ray test module, and a driver to act on it.

The cluster runs outside this process's tree: `ray start` runs in a session of its own
(so a signal to the test runner's process group does not kill the raylet), its daemons are
reparented away from us when it returns (so the suite's per-test check for leftover
descendants does not count the raylet's workers), and at the module's end the process group
of that session (every process `ray start` left, and only those) is ended. Usage stats off,
no dashboard, two CPUs, state under a private temp dir.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

NO_RAY = importlib.util.find_spec("ray") is None
NO_RAY_REASON = "Ray is not installed (pip install 'otp-supervisor[ray]')"

HERE = os.path.dirname(os.path.abspath(__file__))
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Keep 127.0.0.1 as given (Ray otherwise rewrites it to the host's address).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


def _end_group(pgid: int) -> None:
    """SIGTERM the session's process group, SIGKILL what is left after a grace."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)  # no event tells us a group emptied; bounded
        if not _group_alive(pgid):
            return


class Cluster:
    """The module's Ray cluster: `address`, and `ctl(op, **args)` through a driver."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="otpray-")
        self.env = {**os.environ, **RAY_ENV}
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        self.head = subprocess.Popen(
            [ray_cli, "start", "--head", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats", "--port=0", "--node-ip-address=127.0.0.1",
             f"--temp-dir={self.tmp}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True)
        self.pgid = self.head.pid
        self.driver: subprocess.Popen | None = None
        try:
            out, _ = self.head.communicate(timeout=120)
            if self.head.returncode != 0:
                raise RuntimeError(f"ray start failed: {out.decode(errors='replace')[-2000:]}")
            with open(os.path.join(self.tmp, "ray_current_cluster")) as f:
                self.address = f.read().strip()
            self.driver = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_control.py"), self.address],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env, text=True)
            first = self.driver.stdout.readline()
            if not first or not json.loads(first)["ok"]:
                raise RuntimeError("the test driver could not join the cluster")
        except BaseException:
            self.close()
            raise

    def ctl(self, op: str, **args) -> object:
        assert self.driver is not None
        self.driver.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.driver.stdin.flush()
        reply = json.loads(self.driver.stdout.readline())
        if not reply["ok"]:
            raise AssertionError(f"ray driver: {op}: {reply['error']}")
        return reply["value"]

    def close(self) -> None:
        if self.driver is not None:
            self.driver.stdin.close()
            try:
                self.driver.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait()
        _end_group(self.pgid)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    old = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)  # the trees' bridges inherit them
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.close()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
