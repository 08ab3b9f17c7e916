"""A second, unprivileged local user for the hostile-user tests.

The tests in this folder play an attacker who shares the machine: a user other than the one
running the supervisor. Creating one needs root; elsewhere these tests skip and say why.
Processes run as that user are still our descendants, so the suite's leak check covers them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

PROBE_USER = "otpsup-probe"
# The attacker's code runs under the system interpreter: our virtualenv may sit in a 0700
# directory the other user cannot enter. It needs nothing beyond the standard library.
SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                      if os.access(p, os.X_OK)), sys.executable)


@attrs.frozen
class OtherUser:
    name: str
    uid: int
    gid: int
    scratch: Path  # a directory the other user owns, reachable by both of us

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start `argv` as this user (no supplementary groups)."""
        return subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[],
                                cwd=str(self.scratch), **kwargs)

    def run(self, argv: list[str], timeout: float = 20.0, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, user=self.uid, group=self.gid, extra_groups=[],
                              cwd=str(self.scratch), timeout=timeout, capture_output=True,
                              text=True, **kwargs)


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PROBE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", PROBE_USER], check=True, capture_output=True)
        return pwd.getpwnam(PROBE_USER)


@pytest.fixture(scope="session")
def other_user() -> Iterator[OtherUser]:
    if os.geteuid() != 0:
        pytest.skip("creating a second local user needs root; run the suite as root to "
                    "play the hostile local user")
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not installed: cannot create a second local user")
    entry = _ensure_user()
    base = Path(tempfile.mkdtemp(prefix="otpsup-probe-"))
    os.chmod(base, 0o755)
    scratch = base / "home"
    scratch.mkdir(mode=0o700)
    os.chown(scratch, entry.pw_uid, entry.pw_gid)
    try:
        yield OtherUser(PROBE_USER, entry.pw_uid, entry.pw_gid, scratch)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A root-owned directory (0755) in the system temp dir holding `shared`, a sticky
    world-writable directory like /tmp (mode 1777) that the other user can reach."""
    base = Path(tempfile.mkdtemp(prefix="otpsup-trust-"))
    os.chmod(base, 0o755)
    shared = base / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
