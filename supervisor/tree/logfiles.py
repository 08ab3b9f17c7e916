"""Per-child log files on disk: loguru's file sinks, written by the capturing supervisor.

Where the files are and which directories are trusted: `supervisor.logoptions`.

Rotation by size, the number of rotated files kept and their compression are loguru's
own (its file sink), one sink per file. The sinks are not handlers of the global logger:
a forked worker calls ``logger.remove()`` first thing, which would stop (and, without
rotation, compress) its parent's files. They are plain objects written by the supervisor
that captures the child; a forked child never touches the copies it inherited (their
descriptors are closed by `proc.fork_child`, and the objects stay referenced from the
parent's stack, never finalized in the child, so no reused descriptor is closed twice).
Files are opened with O_NOFOLLOW, must be ours, and are kept at mode 0600 (0640).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..logoptions import LogOptions, child_file, format_line, prepare_dir
from ..wire.trust import describe_uid

__all__ = ["ChildFile", "SupervisorFile", "add_supervisor_file", "text_format"]


def _opener(mode: int) -> Any:
    """open()'s opener for a log file: no symlink followed, ours, at `mode`."""

    def opener(path: str, flags: int) -> int:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise PermissionError(errno.EPERM, f"refusing {path}: owned by "
                                      f"{describe_uid(info.st_uid)} or not a regular file")
            if stat.S_IMODE(info.st_mode) != mode:
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return opener



def _file_sink(path: Path, options: LogOptions) -> Any:
    # loguru's own file sink: its size rotation, retention and compression. A module of
    # loguru's that it does not export; its constructor is the one `logger.add` calls.
    from loguru._file_sink import FileSink

    settings = options.sink_options()
    if settings.get("compression"):
        settings["compression"] = _compressor(FileSink, settings["compression"],
                                              options.file_mode)
    return FileSink(str(path), mode="a", buffering=1, encoding="utf-8",
                    opener=_opener(options.file_mode), **settings)


def _compressor(sink_class: Any, ext: str, mode: int) -> Any:
    """loguru's compression for `ext`, then the archive given the log files' mode (the
    compressor creates it under the process umask)."""
    compress = sink_class._make_compression_function(ext)

    def run(path: str) -> None:
        compress(path)
        try:
            # In our own directory, which nobody else can write: no link to fear.
            os.chmod(f"{path}.{ext}", mode)
        except FileNotFoundError:  # the compressor wrote nothing
            pass

    return run


class ChildFile:
    """The log file(s) of one child, written by the supervisor that captures it.

    Raises ConfigError when a directory on the way is refused, OSError when a file cannot
    be opened (a symlink planted at its name, no space).
    """

    def __init__(self, path: str, options: LogOptions) -> None:
        assert options.dir is not None
        self.path = path
        self.format = options.format
        self.owner = os.getpid()  # only this process writes or closes the sinks
        base = child_file(options.dir, path, "")
        directory = Path(options.dir)
        for part in base.relative_to(directory).parts[:-1]:
            directory = directory / part
            prepare_dir(directory, options.dir_mode)
        if options.split:
            out = _file_sink(base.with_name(base.name + ".out"), options)
            try:
                err = _file_sink(base.with_name(base.name + ".err"), options)
            except BaseException:
                out.stop()  # no half-open pair: the caller gets neither
                raise
            self.sinks = {"stdout": out, "stderr": err, "log": err}
        else:
            one = _file_sink(base.with_name(base.name + ".log"), options)
            self.sinks = {"stdout": one, "stderr": one, "log": one}

    def write(self, when: float, stream: str, level: str, message: str,
              extra: Mapping[str, Any] | None = None) -> None:
        """One line; raises OSError when the file cannot be written (or rotated)."""
        if os.getpid() != self.owner:
            return  # an inherited copy in a forked child: not ours to write
        self.sinks[stream].write(format_line(self.format, self.path, when, stream, level,
                                             message, extra))

    def close(self) -> None:
        if os.getpid() != self.owner:
            return
        for sink in {id(s): s for s in self.sinks.values()}.values():
            sink.stop()


# ---------------------------------------------------------------------- the supervisor's log
def text_format(clock: str = "HH:mm:ss.SSS") -> Any:
    """loguru's format for the tree's text log: time, level, then (for a child's stdout or
    stderr line, so the two can be told apart) the stream, then the message."""

    def fmt(record: Any) -> str:
        stream = record["extra"].get("stream")
        column = f"{stream: <6} | " if stream in ("stdout", "stderr") else ""
        return "{time:" + clock + "} | {level: <7} | " + column + "{message}\n{exception}"

    return fmt


_KEEP: list[Any] = []  # sinks inherited by forked children: never finalized there


class SupervisorFile:
    """A loguru sink writing the supervisor's own log to `path`, rotated like the
    children's files (`LogOptions.file`).

    The root rotates it. Child supervisors, which inherit the handler, append to the same
    file through a sink of their own that reopens it after each rotation (loguru's
    `watch`); a forked worker, which removes every handler at once, never touches it.
    Raises ConfigError when its directory is refused, OSError when it cannot be opened.
    """

    def __init__(self, path: str | os.PathLike, options: LogOptions) -> None:
        self.path = Path(os.path.abspath(path))
        prepare_dir(self.path.parent, options.dir_mode, field="logs.file")
        self.options = options
        self.owner = os.getpid()
        self.sink = _file_sink(self.path, options)
        self.follower: Any = None  # a child supervisor's own sink on the same file
        _KEEP.append(self)

    def write(self, message: str) -> None:
        if os.getpid() == self.owner:
            self.sink.write(message)
            return
        if self.follower is None or self.follower[0] != os.getpid():
            from loguru._file_sink import FileSink

            self.follower = (os.getpid(), FileSink(
                str(self.path), mode="a", buffering=1, encoding="utf-8", watch=True,
                opener=_opener(self.options.file_mode)))
        self.follower[1].write(message)

    def stop(self) -> None:
        """Called by loguru when the handler is removed: only the process that opened a
        sink closes it (in a forked child the descriptor number may be another file's)."""
        if os.getpid() == self.owner:
            self.sink.stop()
        elif self.follower is not None and self.follower[0] == os.getpid():
            self.follower[1].stop()
            self.follower = None


def add_supervisor_file(options: LogOptions) -> int:
    """Log this process's records to `options.file` too (loguru's JSON records with
    ``format = "json"``); the loguru handler id. Raises what `SupervisorFile` raises."""
    from loguru import logger

    assert options.file is not None
    sink = SupervisorFile(options.file, options)
    if options.format == "json":
        return logger.add(sink, serialize=True, level="INFO")
    return logger.add(sink, level="INFO", colorize=False,
                      format=text_format("YYYY-MM-DD HH:mm:ss.SSS"))

