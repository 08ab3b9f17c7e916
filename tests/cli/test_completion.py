"""`completion SHELL`: the script it prints completes commands, options and files."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytest.importorskip("shtab", reason="the completion extra (shtab) is not installed")

BASH = shutil.which("bash")


def _script(shell: str) -> str:
    result = subprocess.run([sys.executable, "-m", "supervisor", "completion", shell],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _complete(script: str, words: list[str], cwd) -> list[str]:
    """Ask bash's completion function what it offers after `words` (the last is partial)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    driver = (f"{script}\n"
              f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
              "_shtab_otp_supervisor\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run([BASH, "--norc", "--noprofile", "-c", driver], cwd=cwd,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return sorted(line for line in result.stdout.splitlines() if line)


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_the_bash_script_completes_commands_options_and_tree_files(tmp_path):
    script = _script("bash")
    assert "complete -o bashdefault -F _shtab_otp_supervisor otp-supervisor" in script
    (tmp_path / "demo.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert _complete(script, ["otp-supervisor", "st"], tmp_path) == [
        "start", "status", "stop"]
    assert _complete(script, ["otp-supervisor", "events", "--f"], tmp_path) == ["--follow"]
    assert _complete(script, ["otp-supervisor", "completion", ""], tmp_path) == [
        "bash", "tcsh", "zsh"]
    assert _complete(script, ["otp-supervisor", "run", "de"], tmp_path) == ["demo.toml"]
    # Only the control commands take --server-uid; check talks to no tree.
    assert _complete(script, ["otp-supervisor", "check", "--s"], tmp_path) == ["--svg"]


@pytest.mark.parametrize("shell, marker", [("zsh", "#compdef otp-supervisor"),
                                           ("tcsh", "complete otp-supervisor")])
def test_zsh_and_tcsh_scripts_name_every_command(shell, marker):
    script = _script(shell)
    assert marker in script
    for command in ("run", "check", "status", "call", "signal", "events", "completion"):
        assert command in script, command


def test_an_unknown_shell_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "supervisor", "completion", "fish"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "invalid choice: 'fish'" in result.stderr
