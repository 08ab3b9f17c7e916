"""The README says what the code does: its matrix table is the code's default matrix."""

from __future__ import annotations

import re
from pathlib import Path

from strategies.matrix import DEFAULT_MATRIX

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_matrix_rows() -> dict[str, tuple[str, str, int, str]]:
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"^\| (\w+_error) \| (\w+) \| (\w+) \| (\d+) \| (\w+) \|$", line)
        if m:
            rows[m[1]] = (m[2], m[3], int(m[4]), m[5])
    return rows


def test_readme_matrix_table_matches_the_default_matrix():
    expected = {str(cat): (str(rule.severity), str(rule.recovery), rule.max_retries,
                           str(rule.backoff)) for cat, rule in DEFAULT_MATRIX.items()}
    assert readme_matrix_rows() == expected


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_tour_runs_as_written(tmp_path):
    import subprocess
    import sys

    tour = next(block for block in python_blocks() if "class Counter(Worker)" in block)
    script = tmp_path / "tour.py"
    script.write_text(tour)
    done = subprocess.run([sys.executable, str(script)], cwd=README.parent, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_command_table_lists_every_command_with_an_example():
    """Every subcommand of the command line has a row in the README's command table, and
    every row ends with an example of that command through the console script."""
    from supervisor.cli import _parser

    text = README.read_text()
    start = text.index("| command | what it does | example |\n")
    rows = text[start:text.index("\n\n", start)].splitlines()[2:]
    listed = set()
    for row in rows:
        command = re.match(r"^\| `python -m supervisor ([a-z-]+)", row)[1]
        example = re.search(r"\| `otp-supervisor ([a-z-]+)[^`]*` \|$", row)
        assert example is not None, row
        names = {command, *re.findall(r"\\\|([a-z]+)", row.split("`")[1])}
        assert example[1] in names, row
        listed |= names
    subcommands = next(a for a in _parser()._actions if a.dest == "command").choices
    assert set(subcommands) <= listed
