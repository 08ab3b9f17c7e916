"""Per-child log files: the options, the names on disk, the directories we trust.

    [logs] dir = "/var/log/tree"       (or `run --log-dir DIR`, `start(spec, logs=...)`)

    jobs/job-1 ──▶ DIR/jobs/job-1.log          one file per worker or program
                   DIR/jobs/job-1.out / .err   with split = true
    rotated:       DIR/jobs/job-1.2026-12-06_10-43-06_123456.log[.gz]

A path's parts become directories below DIR. Inside an id every character other than an
ASCII letter, a digit, `-` and `_` is written as `%XX` (its UTF-8 bytes): ``..`` and ``.``
cannot climb out of DIR, and a dot never appears in a name, so the glob loguru uses to
find a child's rotated files (``job-1.*.log``) can match no other child's file. A part
longer than 200 bytes is cut and ends in ``~`` and a hash of the whole id.

Trust: DIR is created 0700 (0750 with ``group_readable``), and so is every directory
below it; one that exists must be a real directory (not a symlink) owned by us and
writable by nobody else, and the directories above it must pass the control socket's
check (`wire.trust.check_place`). A service run as root thus writes only where nobody
else could have planted a link. The files themselves are written by the supervisors
(`tree.logfiles`); this module is shared with the caller's side (`supervisor.start`
checks the directory before the root boots, `logs` prints lines as the files hold them).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .errors import ConfigError, UntrustedServer
from .wire.trust import Trust, check_place, describe_uid, missing_dirs

__all__ = ["LogOptions", "child_file", "prepare_dir", "prepare", "format_line",
           "parse_size", "COMPRESSIONS", "FORMATS"]

COMPRESSIONS = ("gz", "bz2", "xz", "zip")
FORMATS = ("text", "json")
_SAFE = re.compile(rb"[A-Za-z0-9_-]")
_PART_LIMIT = 200  # bytes of an escaped id kept in a file name (NAME_MAX is 255)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(field: str, value: Any) -> int:
    """Bytes from an integer or a string such as ``"10 MB"`` / ``"512 KiB"``; raises
    ConfigError naming `field`."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None or float(match[1]) <= 0:
        raise ConfigError(f"expected a size in bytes (an integer, or a string such as "
                          f"'10 MB' or '512 KiB'), got {value!r}", field=field, value=value)
    return int(float(match[1]) * _UNITS[(match[2] or "b").lower()])


def _check_rotation(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and value != 0:
        parse_size(f"logs.{attr.name}", value)


def _check_count(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 1):
        raise ConfigError(f"expected a number of files >= 1, got {value!r}",
                          field=f"logs.{attr.name}", value=value)


def _check_choice(choices: tuple[str, ...]) -> Any:
    def check(inst: Any, attr: Any, value: Any) -> None:
        if value is not None and value not in choices:
            raise ConfigError(f"expected one of {', '.join(choices)}, got {value!r}",
                              field=f"logs.{attr.name}", value=value)
    return check


def _check_path(inst: Any, attr: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str | os.PathLike) or not os.fspath(value)):
        raise ConfigError(f"expected a path, got {value!r}", field=f"logs.{attr.name}",
                          value=value)


@attrs.frozen(kw_only=True)
class LogOptions:
    """Where the tree's logs go on disk (the ``[logs]`` table; `supervisor.start(spec,
    logs=LogOptions(dir=...))`). Every field is optional.

    `dir`: each worker's and program's output goes to ``dir/<path>.log``; `split`: to
    ``<path>.out`` (stdout) and ``<path>.err`` (stderr and `self.log` records) instead.
    `rotation`: a file is rotated once it would grow past this size (bytes, or ``"10 MB"``;
    0 or None: never, and then retention and compression do not apply); `retention`: rotated files kept per file (None: all); `compression`:
    rotated files are compressed (gz, bz2, xz, zip; None: not). `format`: ``text`` or
    ``json`` lines. `group_readable`: files 0640 and directories 0750 instead of 0600 and
    0700. `echo`: children's lines also go to the supervisor's log (stderr), as they do
    when `dir` is unset. `file`: the supervisor's own log is written to this file too,
    rotated the same way. Raises ConfigError naming the field.
    """

    dir: str | None = attrs.field(default=None, validator=_check_path)
    file: str | None = attrs.field(default=None, validator=_check_path)
    split: bool = False
    rotation: int | str | None = attrs.field(default="10 MB", validator=_check_rotation)
    retention: int | None = attrs.field(default=5, validator=_check_count)
    compression: str | None = attrs.field(default=None, validator=_check_choice(COMPRESSIONS))
    format: str = attrs.field(default="text", validator=_check_choice(FORMATS))
    group_readable: bool = False
    echo: bool = False

    def __attrs_post_init__(self) -> None:
        for name in ("split", "group_readable", "echo"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"expected true or false, got {getattr(self, name)!r}",
                                  field=f"logs.{name}", value=getattr(self, name))
        if self.dir is not None and self.file is not None:
            inside = Path(os.path.abspath(self.file)).is_relative_to(os.path.abspath(self.dir))
            if inside:  # a child's file could have its name
                raise ConfigError(f"the supervisor's log {self.file} is inside the children's "
                                  f"directory {self.dir}; put it elsewhere", field="logs.file",
                                  value=self.file)

    @property
    def file_mode(self) -> int:
        return 0o640 if self.group_readable else 0o600

    @property
    def dir_mode(self) -> int:
        return 0o750 if self.group_readable else 0o700

    def sink_options(self) -> dict[str, Any]:
        """loguru's file-sink options for these settings (rotation in bytes)."""
        if not self.rotation:
            # Retention and compression apply to rotated files. Without rotation loguru
            # would apply them whenever a file is closed (every stop of its supervisor).
            return {}
        return {"rotation": parse_size("logs.rotation", self.rotation),
                "retention": self.retention, "compression": self.compression}


# ---------------------------------------------------------------------- names on disk
def _escape(part: str) -> str:
    raw = part.encode("utf-8", "surrogateescape")
    name = "".join(chr(b) if _SAFE.fullmatch(bytes([b])) else f"%{b:02X}" for b in raw)
    if len(name) > _PART_LIMIT:
        digest = hashlib.sha256(raw).hexdigest()[:16]
        name = f"{name[:_PART_LIMIT - 17]}~{digest}"
    return name


def child_file(directory: str | os.PathLike, path: str, suffix: str = ".log") -> Path:
    """The file of the child at `path` ("jobs/job-1") below `directory`: its parts become
    directories, each escaped (see the module docstring). Never outside `directory`."""
    parts = [_escape(part) for part in path.strip("/").split("/")]
    return Path(directory, *parts[:-1], parts[-1] + suffix)


# ---------------------------------------------------------------------- directories
def prepare_dir(directory: str | os.PathLike, mode: int = 0o700,
                field: str = "logs.dir") -> Path:
    """Make `directory` ours for log files, or raise ConfigError naming it and its owner.

    Missing directories are created with `mode` (they are then ours). One that exists
    must be a real directory owned by us that group and others cannot write (it is
    refused otherwise, never changed); the directories above must be ones no other user
    can swap (`wire.trust.check_place`).
    """
    target = Path(os.path.abspath(directory))
    place, missing = missing_dirs(target)
    try:
        check_place(place, Trust.of())
    except UntrustedServer as exc:
        raise ConfigError(exc.message, field=field) from None
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(f"cannot use {target}: {exc.strerror or exc}", field=field) from None
    for made in missing:
        try:
            os.mkdir(made, mode)
        except FileExistsError:  # made by someone else meanwhile: checked below
            pass
        except OSError as exc:
            raise ConfigError(f"cannot create {made}: {exc.strerror or exc}",
                              field=field) from None
        _check_own_dir(made, mode, field, created=True)
    if not missing:
        _check_own_dir(target, mode, field, created=False)
    return target


def prepare(logs: Any) -> None:
    """The caller's check of `start(spec, logs=...)` (blocking or asyncio), before the
    root boots: raises TypeError for something that is not a LogOptions, ConfigError when
    `logs.dir` or the directory of `logs.file` is refused."""
    if logs is None:
        return
    if not isinstance(logs, LogOptions):
        raise TypeError(f"logs= expects a LogOptions(...), got {type(logs).__name__}")
    if logs.dir is not None:
        prepare_dir(logs.dir, logs.dir_mode)
    if logs.file is not None:
        prepare_dir(os.path.dirname(os.path.abspath(logs.file)), logs.dir_mode,
                    field="logs.file")


def _check_own_dir(directory: Path, mode: int, field: str, *, created: bool) -> None:
    # Checked through a descriptor opened with O_NOFOLLOW: what is checked is what we
    # opened, so nothing can be swapped in between the check and the use.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise ConfigError(f"cannot open {directory}: {exc.strerror or exc}",
                              field=field) from None
        info = os.lstat(directory)
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise ConfigError(f"refusing {directory}: it is {kind} (owned by "
                          f"{describe_uid(info.st_uid)}), not a directory of ours; remove it "
                          "or pick another directory", field=field) from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise ConfigError(f"refusing {directory}: it is owned by "
                              f"{describe_uid(info.st_uid)}, not by us; another user may "
                              "have planted it; remove it or pick another directory",
                              field=field)
        current = stat.S_IMODE(info.st_mode)
        if created and current != mode:
            os.fchmod(fd, mode)  # ours, made a moment ago under an unusual umask
        elif current & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(f"refusing {directory} (owner {describe_uid(info.st_uid)}): "
                              f"mode {current:04o} lets others write in it, who could plant "
                              f"links there; chmod go-w {directory} or pick another "
                              "directory", field=field)
    finally:
        os.close(fd)



# ---------------------------------------------------------------------- lines
# ---------------------------------------------------------------------- the files
_second: list[Any] = [None, "", "", ""]  # the last whole second formatted: sec, text, iso, tz


def _stamps(when: float) -> tuple[str, str, str, int]:
    """(``2026-12-06 10:43:06``, ``2026-12-06T10:43:06``, ``+00:00``, milliseconds) for
    `when`; the whole second is formatted once (a chatty child writes thousands a second)."""
    sec = int(when // 1)
    if _second[0] != sec:
        iso = datetime.datetime.fromtimestamp(sec).astimezone().isoformat()
        _second[:] = [sec, iso[:10] + " " + iso[11:19], iso[:19], iso[19:]]
    return _second[1], _second[2], _second[3], min(999, int((when - sec) * 1000))


def format_line(fmt: str, path: str, when: float, stream: str, level: str, message: str,
                extra: Mapping[str, Any] | None = None) -> str:
    """One line of a child's log file (and of `python -m supervisor logs`), with its
    newline: ``2026-12-06 10:43:06.123 | INFO    | stdout | message`` or one JSON object
    with `time`, `child`, `stream`, `level`, `message` (and `extra`: a worker's bound
    fields)."""
    text, iso, tz, ms = _stamps(when)
    if fmt == "json":
        record: dict[str, Any] = {"time": f"{iso}.{ms:03d}{tz}", "child": path,
                                  "stream": stream, "level": level, "message": message}
        if extra:
            record["extra"] = dict(extra)
        return json.dumps(record, default=repr) + "\n"
    return f"{text}.{ms:03d} | {level: <7} | {stream: <6} | {message}\n"
