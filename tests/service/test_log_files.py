"""Per-child log files on disk: names, rotation, retention, compression, modes, trust.

Service-mode tests run `python -m supervisor run` in a subprocess (tests/_service.py) and
read the real files it writes; a test waits for a line on the tree's stderr (``echo =
true`` copies children's lines there, after their file has them), never sleeps.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import supervisor
from supervisor import ConfigError, LogOptions, Supervisor, child
from supervisor.logoptions import child_file, prepare_dir
from tests._service import ROOT, running
from tests.cli._workers import Talker

TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| (\w+) +\| (\w+) +\| (.*)")


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as start:
        yield start


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _text_lines(path: Path) -> list[tuple[str, str, str]]:
    lines = path.read_text().splitlines()
    parsed = [TEXT_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    return [m.groups() for m in parsed]


# ---------------------------------------------------------------------- names on disk
@pytest.mark.parametrize(("path", "expected"), [
    ("echo", "echo.log"),
    ("jobs/job-1", "jobs/job-1.log"),
    ("..", "%2E%2E.log"),
    ("a/../b", "a/%2E%2E/b.log"),
    ("web.api", "web%2Eapi.log"),
    ("50%", "50%25.log"),
    ("café", "caf%C3%A9.log"),
    ("x" * 300, "x" * 183 + "~"),
])
def test_a_child_path_names_a_file_inside_the_directory(tmp_path, path, expected):
    found = child_file(tmp_path, path)
    assert str(found.relative_to(tmp_path)).startswith(expected)
    assert found.resolve().is_relative_to(tmp_path.resolve())
    assert len(found.name.encode()) <= 255


def test_no_two_children_share_a_file_or_a_rotation_pattern(tmp_path):
    # A sibling named like another child's rotated file ("job.2026...") must not be
    # matched by that child's retention glob (name.*.log): ids never keep a dot.
    names = [child_file(tmp_path, p).name for p in ("a.b", "a", "a%2Eb", "a_b", "a-b")]
    assert len(set(names)) == len(names)
    assert not any(re.fullmatch(r"a\..*\.log", name) for name in names)


# ---------------------------------------------------------------------- the service
CHATTY = """
[tree]
id = "files"

[logs]
dir = "logs"
rotation = 2000
retention = 2
compression = "gz"
echo = true

[[tree.children]]
id = "jobs"
type = "supervisor"

  [[tree.children.children]]
  id = "chatter"
  start_seconds = 0
  command = ["{python}", "-c", "import sys, time\\nfor i in range(200):\\n    print(f'line {{i:03d}} ' + 'x' * 40, flush=True)\\nfor i in range(5):\\n    print(f'err {{i:03d}}', file=sys.stderr, flush=True)\\ntime.sleep(600)"]
"""


def test_rotation_at_a_small_size_keeps_retention_files_compressed(service, tmp_path):
    svc = service(CHATTY.format(python=sys.executable))
    svc.wait_line("[jobs/chatter] err 004")
    svc.wait_line("[jobs/chatter] line 199")
    logs = tmp_path / "logs"
    current = logs / "jobs" / "chatter.log"
    rotated = sorted((logs / "jobs").glob("chatter.*.log.gz"))
    # ~18 kB written in 2 kB files: many rotations, the last 2 kept, compressed.
    assert len(rotated) == 2
    assert sorted(p.name for p in (logs / "jobs").iterdir()) == sorted(
        [current.name] + [p.name for p in rotated])
    kept = []
    for old in rotated:
        text = gzip.decompress(old.read_bytes()).decode()
        assert 0 < len(text.encode()) <= 2000
        assert _mode(old) == 0o600
        kept += [TEXT_LINE.fullmatch(line).groups() for line in text.splitlines()]
    # stdout and stderr told apart on every line; the newest lines are kept.
    lines = kept + _text_lines(current)
    assert all(stream == ("stdout" if text.startswith("line") else "stderr")
               for _, stream, text in lines)
    assert ("INFO", "stdout", "line 199 " + "x" * 40) in lines
    assert ("INFO", "stderr", "err 004") in lines
    assert len(current.read_bytes()) <= 2000
    assert (_mode(logs), _mode(logs / "jobs"), _mode(current)) == (0o700, 0o700, 0o600)


CRASHY = """
[tree]
id = "crashy"
max_restarts = 5
max_seconds = 10

[logs]
dir = "logs"
split = true
format = "json"
echo = true

[[tree.children]]
id = "talker"
worker = "tests.cli._workers:Talker"
"""


def test_a_crashing_childs_last_lines_are_in_its_files_as_json(service, tmp_path):
    svc = service(CRASHY)
    svc.wait_line("is up")
    assert svc.cmd("call", "talker", "warn", "[90]").returncode == 0
    svc.cmd("call", "talker", "die_loudly")
    at = svc.wait_line("[talker] last words")
    svc.wait_line("[talker] talker talker up", start=at)  # its replacement is up
    out = [json.loads(line) for line in (tmp_path / "logs/talker.out").read_text().splitlines()]
    err = [json.loads(line) for line in (tmp_path / "logs/talker.err").read_text().splitlines()]
    assert [(r["child"], r["stream"], r["level"], r["message"]) for r in out] == [
        ("talker", "stdout", "INFO", "talker talker up"),
        ("talker", "stdout", "INFO", "about to die"),
        ("talker", "stdout", "INFO", "talker talker up")]
    assert [(r["child"], r["stream"], r["level"], r["message"]) for r in err] == [
        ("talker", "log", "WARNING", "disk 90 full"),
        ("talker", "stderr", "INFO", "last words")]
    assert err[0]["extra"] == {"disk": "sda"}
    assert all("time" in r for r in out + err)


DOOMED = """
[tree]
id = "broken"

[logs]
dir = "logs"

[[tree.children]]
id = "w"
worker = "tests.cli._workers:Doomed"
"""


def test_the_output_of_a_child_that_failed_to_start_is_in_its_file(service, tmp_path):
    svc = service(DOOMED)
    assert svc.finish() == 1
    lines = _text_lines(tmp_path / "logs" / "w.log")
    assert lines == [("INFO", "stdout", "loading the model"),
                     ("INFO", "stderr", "model file is corrupt")]
    # Without echo the children's lines stay out of the tree's own log.
    assert not any("loading the model" in line for line in svc.lines)


NESTED = """
[tree]
id = "nested"

[[tree.children]]
id = "talker"
worker = "tests.cli._workers:Talker"

[[tree.children]]
id = "jobs"
type = "supervisor"

  [[tree.children.children]]
  id = "hello"
  start_seconds = 0
  command = ["sh", "-c", "echo nested hello; exec sleep 600"]
"""


def test_the_supervisors_own_log_goes_to_a_file_too(service, tmp_path):
    svc = service(NESTED, "--log-file", str(tmp_path / "sup" / "tree.log"))
    svc.wait_line("[jobs/hello] nested hello")
    assert svc.cmd("shutdown").returncode == 0
    assert svc.finish() == 0
    log = tmp_path / "sup" / "tree.log"
    text = log.read_text()
    assert "tree 'nested' is up" in text and "tree 'nested' stopped: normal" in text
    # Children's lines (no per-child files here) carry their stream there too, also the
    # lines a child supervisor logged (it appends to the root's file).
    assert re.search(r"^\S+ \S+ \| INFO    \| stdout \| \[talker\] talker talker up$", text,
                     re.M)
    assert re.search(r"^\S+ \S+ \| INFO    \| stdout \| \[jobs/hello\] nested hello$", text,
                     re.M)
    assert (_mode(log.parent), _mode(log)) == (0o700, 0o600)


def test_log_dir_on_the_command_line_and_streams_on_the_trees_log(service, tmp_path):
    plain = CRASHY.replace('[logs]\ndir = "logs"\nsplit = true\nformat = "json"\n'
                           'echo = true\n', "")
    svc = service(plain, "--log-dir", str(tmp_path / "cli-logs"))
    svc.wait_line("is up")
    svc.cmd("call", "talker", "die_loudly")
    svc.wait_line("child.restarted talker")
    assert svc.cmd("shutdown").returncode == 0
    assert svc.finish() == 0
    lines = _text_lines(tmp_path / "cli-logs" / "talker.log")
    assert ("INFO", "stdout", "about to die") in lines
    assert ("INFO", "stderr", "last words") in lines
    # Without echo the tree's log has none of the children's lines.
    assert not any("[talker]" in line for line in svc.lines)


def test_the_trees_text_log_tells_stdout_from_stderr(service):
    plain = CRASHY.replace('[logs]\ndir = "logs"\nsplit = true\nformat = "json"\n'
                           'echo = true\n', "")
    svc = service(plain)
    svc.wait_line("is up")
    svc.cmd("call", "talker", "die_loudly")
    out = svc.lines[svc.wait_line("[talker] about to die")]
    err = svc.lines[svc.wait_line("[talker] last words")]
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} \| INFO    \| stdout \| \[talker\] about to die",
                        out)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} \| INFO    \| stderr \| \[talker\] last words",
                        err)


def test_group_readable_files_and_directories(tmp_path):
    spec = Supervisor("app", children=[child("talker", Talker)])
    logs = LogOptions(dir=str(tmp_path / "logs"), group_readable=True)
    with supervisor.start(spec, logs=logs) as app:
        app.call("talker", "say", "from the app")
    lines = _text_lines(tmp_path / "logs" / "talker.log")
    assert lines[-1] == ("INFO", "stdout", "from the app")
    assert (_mode(tmp_path / "logs"), _mode(tmp_path / "logs" / "talker.log")) == (0o750, 0o640)


def test_the_asyncio_start_takes_the_same_logs_option(tmp_path):
    import asyncio

    from supervisor import aio

    spec = Supervisor("app", children=[child("talker", Talker)])

    async def main() -> None:
        async with aio.start(spec, logs=LogOptions(dir=str(tmp_path / "logs"))) as app:
            assert await app.call("talker", "say", "from asyncio") == "from asyncio"

    asyncio.run(main())
    assert _text_lines(tmp_path / "logs" / "talker.log")[-1] == (
        "INFO", "stdout", "from asyncio")


def test_start_refuses_what_is_not_log_options():
    spec = Supervisor("app", children=[child("talker", Talker)])
    with pytest.raises(TypeError, match=r"^logs= expects a LogOptions\(\.\.\.\), got dict$"):
        supervisor.start(spec, logs={"dir": "/tmp"})


# ---------------------------------------------------------------------- trust
def test_a_symlink_in_place_of_the_log_dir_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "logs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"^logs\.dir: refusing .*/logs: it is a symbolic "
                                          r"link \(owned by uid \d+"):
        prepare_dir(tmp_path / "logs")


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_another_users_log_dir_is_refused_naming_the_owner(tmp_path):
    theirs = tmp_path / "logs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match=r"^logs\.dir: refusing .*/logs: it is owned by "
                                          r"uid 65534 \("):
        prepare_dir(theirs)
    # Nor is a directory below one that another user could swap.
    open_dir = tmp_path / "shared"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # not sticky: anyone could rename what is in it
    with pytest.raises(ConfigError, match=r"^logs\.dir: refusing .*/shared .*writable by "
                                          r"others"):
        prepare_dir(open_dir / "logs")


def test_a_writable_existing_dir_is_refused_and_never_changed(tmp_path):
    loose = tmp_path / "logs"
    loose.mkdir()
    os.chmod(loose, 0o770)
    with pytest.raises(ConfigError, match=r"mode 0770 lets others write in it"):
        prepare_dir(loose)
    assert _mode(loose) == 0o770


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_run_refuses_a_hostile_log_dir_with_exit_2(tmp_path):
    theirs = tmp_path / "logs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    tree = tmp_path / "tree.toml"
    tree.write_text(CRASHY)
    done = subprocess.run([sys.executable, "-m", "supervisor", "run", str(tree), "--socket",
                           str(tmp_path / "ctl.sock")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.endswith(f"error: logs.dir: refusing {theirs}: it is owned by uid "
                                "65534 (nobody), not by us; another user may have planted "
                                "it; remove it or pick another directory\n")


def test_a_link_planted_at_a_childs_file_is_not_followed(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("")
    (logs / "talker.log").symlink_to(target)
    spec = Supervisor("app", children=[child("talker", Talker)])
    with supervisor.start(spec, logs=LogOptions(dir=str(logs))) as app:
        assert app.call("talker", "say", "still served") == "still served"
    assert target.read_text() == ""
    assert (logs / "talker.log").is_symlink()


@pytest.mark.parametrize(("options", "message"), [
    ({"rotation": "ten"}, r"^logs\.rotation: expected a size"),
    ({"retention": 0}, r"^logs\.retention: expected a number of files >= 1"),
    ({"compression": "rar"}, r"^logs\.compression: expected one of gz, bz2, xz, zip"),
    ({"format": "xml"}, r"^logs\.format: expected one of text, json"),
    ({"split": "yes"}, r"^logs\.split: expected true or false"),
    ({"dir": "/var/log/t", "file": "/var/log/t/tree.log"},
     r"^logs\.file: the supervisor's log /var/log/t/tree.log is inside the children's "
     r"directory /var/log/t; put it elsewhere$"),
])
def test_bad_log_options_name_the_field(options, message):
    with pytest.raises(ConfigError, match=message):
        LogOptions(**options)


def test_a_bad_logs_table_is_exit_2_naming_file_and_field(tmp_path):
    tree = tmp_path / "tree.toml"
    tree.write_text(CRASHY.replace('format = "json"', 'format = "xml"'))
    done = subprocess.run([sys.executable, "-m", "supervisor", "run", str(tree), "--socket",
                           str(tmp_path / "ctl.sock")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stderr) == (
        2, f"error: {tree}: logs.format: expected one of text, json, got 'xml'\n")
