"""Where `python -m supervisor run` puts its control socket, against a hostile local user.

The server creates only its own private directory and checks it through a descriptor
opened with O_NOFOLLOW; any other directory is used as it is and never chmodded; anything
at the socket's path that is not a stale socket of ours is left alone. Each attack below is
set up by the other user (its code: the system interpreter, standard library only) in a
private stand-in for the system's temporary directory (TMPDIR), never in the real /tmp.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.wire.trust import Trust, check_place

from .._service import Service, running
from .conftest import SYSTEM_PYTHON

pytestmark = pytest.mark.integration

TREE = """
[tree]
id = "paths"

[[tree.children]]
id = "echo"
worker = "workers.echo:Echo"
"""

UID = os.getuid()


@pytest.fixture
def sticky_tmp(shared_tmp: Path) -> Path:
    """A stand-in for /tmp: root's, mode 1777 (world-writable, sticky), reachable by all."""
    return shared_tmp / "shared"


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as start:
        yield start


def default_env(tmpdir: Path) -> dict[str, str]:
    """The environment of a run under sudo or cron: no XDG_RUNTIME_DIR, TMPDIR set."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmpdir)
    return env


def refused(svc: Service) -> str:
    """The one stderr line of a run that must refuse to start (exit status 2)."""
    assert svc.finish(30) == 2, "\n".join(svc.lines[-20:])
    assert len(svc.lines) == 1, svc.lines
    return svc.lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def as_other(other_user, code: str) -> None:
    done = other_user.run([SYSTEM_PYTHON, "-c", code])
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------ the default directory
def test_a_symlink_in_place_of_the_private_directory_is_refused(other_user, sticky_tmp,
                                                                tmp_path, service):
    """The attacker points `<tmp>/supervisor-<uid>` at a root-owned directory: the run is
    refused; the target keeps its mode and gets no socket."""
    target = tmp_path / "precious"
    target.mkdir()
    os.chmod(target, 0o755)
    link = sticky_tmp / f"supervisor-{UID}"
    as_other(other_user, f"import os; os.symlink({str(target)!r}, {str(link)!r})")
    svc = service(TREE, socket=None, env=default_env(sticky_tmp))
    assert refused(svc) == (
        f"error: socket: refusing {link}: it is a symbolic link (owned by uid "
        f"{other_user.uid} ({other_user.name})), not a directory of ours; remove it or pick "
        "another --socket")
    assert mode(target) == 0o755
    assert os.listdir(target) == []
    assert os.readlink(link) == str(target)


def test_a_symlink_of_our_own_is_not_followed_either(sticky_tmp, tmp_path, service):
    """The same without a second user (runs unprivileged too): the check is "not a
    symlink", whoever made it."""
    target = tmp_path / "mine"
    target.mkdir()
    os.chmod(target, 0o755)
    link = sticky_tmp / f"supervisor-{UID}"
    link.symlink_to(target)
    svc = service(TREE, socket=None, env=default_env(sticky_tmp))
    assert refused(svc).startswith(f"error: socket: refusing {link}: it is a symbolic link")
    assert mode(target) == 0o755
    assert os.listdir(target) == []


def test_a_private_directory_made_by_another_user_is_refused(other_user, sticky_tmp,
                                                             service):
    directory = sticky_tmp / f"supervisor-{UID}"
    as_other(other_user, f"import os; os.mkdir({str(directory)!r}); "
                         f"os.chmod({str(directory)!r}, 0o777)")
    svc = service(TREE, socket=None, env=default_env(sticky_tmp))
    assert refused(svc) == (
        f"error: socket: refusing {directory}: it is owned by uid {other_user.uid} "
        f"({other_user.name}), not by us; remove it or pick another --socket")
    assert mode(directory) == 0o777
    assert os.listdir(directory) == []


def test_a_temporary_directory_of_another_user_is_refused(other_user, service):
    """TMPDIR owned by the attacker: whatever we created in it, they could rename away
    and replace with their own directory, so nothing is created there at all."""
    theirs = other_user.scratch / "tmp"
    as_other(other_user, f"import os; os.mkdir({str(theirs)!r}, 0o755)")
    svc = service(TREE, socket=None, env=default_env(theirs))
    # The first directory another user could swap things in is theirs: their home.
    assert refused(svc) == (
        f"error: socket: refusing {other_user.scratch}: it belongs to uid {other_user.uid} "
        f"({other_user.name}), not to root; another user may have planted it")
    assert os.listdir(theirs) == []


def test_our_own_private_directory_left_open_is_refused_not_chmodded(sticky_tmp, service):
    directory = sticky_tmp / f"supervisor-{UID}"
    directory.mkdir()
    os.chmod(directory, 0o755)
    svc = service(TREE, socket=None, env=default_env(sticky_tmp))
    assert refused(svc) == (
        f"error: socket: refusing {directory}: mode 0755 gives group or others access; "
        f"make it private (chmod 700 {directory}) or remove it")
    assert mode(directory) == 0o755


def test_a_stopping_run_removes_only_the_socket_it_created(sticky_tmp, service):
    """Run A's socket file is deleted by hand and run B starts on the same path: when A
    stops, B's socket stays (A once removed whatever was at its path)."""
    env = default_env(sticky_tmp)
    first = service(TREE, socket=None, env=env)
    first.wait_line("is up")
    directory = sticky_tmp / f"supervisor-{UID}"
    path = directory / "paths.sock"
    assert mode(directory) == 0o700
    assert (stat.S_ISSOCK(os.lstat(path).st_mode), mode(path)) == (True, 0o600)
    path.unlink()
    second = service(TREE, socket=None, env=env)
    second.wait_line("is up")
    assert first.stop() == 0
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    done = second.cmd("status")  # found without --socket: B is the one running there
    assert done.returncode == 0, done.stderr
    assert second.stop() == 0
    assert os.listdir(directory) == []
    assert mode(sticky_tmp) == 0o1777


# ------------------------------------------------------------ --socket PATH
def test_a_socket_in_a_shared_directory_leaves_the_directory_alone(sticky_tmp, service):
    """`--socket /tmp/x.sock` once chmodded /tmp to 0700, dropping its sticky bit."""
    path = sticky_tmp / "x.sock"
    svc = service(TREE, socket=str(path))
    svc.wait_line("is up")
    assert mode(sticky_tmp) == 0o1777
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert mode(path) == 0o600
    done = svc.cmd("call", "echo", "echo", '["hi"]')
    assert (done.returncode, done.stdout) == (0, '"hi"\n'), done.stderr
    assert svc.stop() == 0
    assert not path.exists()
    assert mode(sticky_tmp) == 0o1777


def test_a_socket_in_a_home_like_directory_leaves_its_mode_alone(tmp_path, service):
    """`--socket $HOME/x.sock` once chmodded $HOME to 0700."""
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    svc = service(TREE, socket=str(home / "x.sock"))
    svc.wait_line("is up")
    assert mode(home) == 0o755
    assert mode(home / "x.sock") == 0o600
    assert svc.stop() == 0
    assert mode(home) == 0o755
    assert os.listdir(home) == []


def test_a_file_at_the_socket_path_is_not_replaced(tmp_path, service):
    path = tmp_path / "x.sock"
    path.write_text("keep me")
    svc = service(TREE, socket=str(path))
    assert refused(svc) == (
        f"error: socket: refusing to replace {path}: it is a file owned by uid {UID} "
        f"({pwd.getpwuid(UID).pw_name}), not a socket of ours; remove it or pick another "
        "--socket")
    assert path.read_text() == "keep me"


def test_another_user_s_socket_at_the_path_is_not_replaced(other_user, sticky_tmp,
                                                           service):
    path = sticky_tmp / "x.sock"
    as_other(other_user, "import socket; s = socket.socket(socket.AF_UNIX); "
                         f"s.bind({str(path)!r})")
    svc = service(TREE, socket=str(path))
    assert refused(svc) == (
        f"error: socket: refusing to replace {path}: it is a socket owned by uid "
        f"{other_user.uid} ({other_user.name}), not a socket of ours; remove it or pick "
        "another --socket")
    assert os.lstat(path).st_uid == other_user.uid


# ------------------------------------------------------------ the directory chain
def test_the_chain_refuses_a_directory_others_can_write_unless_sticky(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(ConfigError, match=rf"^socket: refusing {open_dir} \(owner uid {UID} "
                                          r"\(\w+\)\): it is writable by others \(mode "
                                          r"0777\), who could swap what is in it$"):
        check_place(open_dir, Trust.of())
    os.chmod(open_dir, 0o1777)
    check_place(open_dir, Trust.of())


def test_the_chain_is_checked_through_symlinks(other_user, tmp_path):
    """A symlink of ours to a directory below another user's: they could swap it."""
    target = other_user.scratch / "d"
    as_other(other_user, f"import os; os.mkdir({str(target)!r}, 0o755)")
    link = tmp_path / "link"
    link.symlink_to(target)
    # The walk stops at the first directory someone else could swap: their own home.
    with pytest.raises(ConfigError, match=rf"^socket: refusing {other_user.scratch}: it "
                                          "belongs to "):
        check_place(link, Trust.of())
