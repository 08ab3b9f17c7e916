"""The README's asyncio example runs as it is, start to end, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]


def test_the_asyncio_server_example_runs():
    done = subprocess.run([sys.executable, "examples/aio_server.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "sent 5 -> 5",
        "sent 10 -> 15",
        "sent x -> error: invalid literal for int() with base 10: b'x\\n'",
    ]


def test_the_readme_shows_the_example_as_it_is():
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "examples" / "aio_server.py").read_text()
    assert example[example.index("from __future__"):] in readme
