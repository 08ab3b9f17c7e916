"""Workers for the CLI tests (imported by `python -m supervisor run` from the repo root)."""

from __future__ import annotations

import os
import sys

from supervisor import Worker


class Talker(Worker):
    """Prints to stdout and stderr; crashes after its last words on request."""

    def init(self) -> None:
        print(f"talker {self.id} up")

    def say(self, text: str) -> str:
        print(text)
        return text

    def die_loudly(self) -> None:
        print("about to die", flush=False)
        print("last words", file=sys.stderr)
        os._exit(9)

    def pid(self) -> int:
        return os.getpid()

    def warn(self, percent: int) -> None:
        self.log.bind(disk="sda").warning("disk {} full", percent)


class Doomed(Worker):
    """Says why on stdout and stderr, then fails its init."""

    def init(self) -> None:
        print("loading the model")
        print("model file is corrupt", file=sys.stderr)
        raise RuntimeError("cannot load the model")
