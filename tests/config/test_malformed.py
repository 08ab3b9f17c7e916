"""The malformed corpus: every file in malformed/ fails with exactly the message pinned here.

Each message is written without the file name it starts with (the file is loaded by its
bare name from inside malformed/, so str(error) is that name followed by the entry).
"""

from __future__ import annotations

import pathlib

import pytest

from supervisor.config import load
from supervisor.errors import ConfigError

MALFORMED = pathlib.Path(__file__).parent / "malformed"

EXPECTED = {
    'bad_encoding.toml': ': not UTF-8 text (byte 14): invalid start byte',
    'bad_id_slash.toml':
        ": tree.children[0].id: expected a non-empty string without '/' or surrounding spaces, "
        "got 'jobs/1'",
    'bad_shutdown_word.toml':
        ": tree.children[0].shutdown: expected one of brutal_kill, infinity, got 'forever'",
    'bad_stop_signal.toml':
        ": tree.children[0].stop_signal: expected a signal name such as 'SIGTERM', got "
        "'SIGSTOPP'",
    'deep_nested_restart.toml':
        ': tree.children[0].children[1].children[0].restart: expected one of permanent, '
        "transient, temporary, got 'always'",
    'duplicate_ids.toml': ": tree.children[1].id: duplicate child id 'echo'",
    'empty_command.toml':
        ': tree.children[0].command: expected a non-empty list of strings, got []',
    'import_missing_attribute.toml':
        ": tree.children[0].worker: module 'workers.echo' has no attribute 'Echoo'",
    'import_missing_module.toml':
        ": tree.children[0].worker: cannot import 'no_such_module': No module named "
        "'no_such_module'",
    'import_not_a_worker.toml':
        ': tree.children[0].worker: expected a Worker subclass or an import string, got '
        "'collections:OrderedDict'",
    'import_pool_worker.toml':
        ": tree.children[0].worker: module 'workers.echo' has no attribute 'Nope'",
    'import_relative.toml':
        ": tree.children[0].worker: importing '.echo:Echo' failed: TypeError: the 'package' "
        "argument is required to perform a relative import for '.echo'",
    'import_without_colon.toml':
        ": tree.children[0].worker: expected an import string 'package.module:Class', got "
        "'workers.echo.Echo'",
    'matrix_bad_severity.toml':
        ': tree.children[0].errors.connection_error.severity: expected one of critical, major, '
        "minor, warning, got 'catastrophic'",
    'matrix_given_twice.toml':
        ': tree.errors: the tree-wide matrix is given twice; keep either [errors] or '
        '[tree.errors]',
    'matrix_negative_backoff_table.toml':
        ': tree.children[0].template.errors.timeout_error.backoff[1]: expected a number of '
        'seconds >= 0, got -1',
    'matrix_negative_max_retries.toml':
        ': errors.connection_error.max_retries: expected an integer >= 0, got -1',
    'matrix_row_not_table.toml':
        ': errors.timeout_error: expected a Rule or a table of severity, recovery, '
        'max_retries, backoff, on_exhausted, got 4',
    'matrix_unknown_backoff.toml':
        ': tree.children[0].errors.timeout_error.backoff: expected one of none, linear, '
        'exponential, fibonacci, decorrelated_jitter, immediate, a list of seconds or a '
        "callable, got 'quadratic'",
    'matrix_unknown_category.toml':
        ': errors.timeout_eror: unknown category; expected one of initialization_error, '
        'connection_error, communication_error, timeout_error, resource_error, '
        'health_check_error, session_error, python_error, system_error',
    'matrix_unknown_field.toml':
        ': tree.children[0].errors.python_error.retries: unknown field; expected one of '
        'severity, recovery, max_retries, backoff, on_exhausted',
    'missing_child_id.toml': ": tree.children[0].id: required key 'id' is missing",
    'missing_root_id.toml': ": tree.id: required key 'id' is missing",
    'missing_template.toml':
        ": tree.children[0].template: strategy 'simple_one_for_one' needs a template child "
        'spec',
    'missing_tree.toml': ': tree: required table [tree] (the root supervisor) is missing',
    'missing_worker.toml':
        ": tree.children[0].worker: required key 'worker' is missing; a child runs worker = "
        "'package.module:Class' or command = [...]",
    'negative_max_restarts.toml': ': tree.max_restarts: expected an integer >= 0, got -1',
    'negative_shutdown.toml': ': tree.children[0].shutdown: expected a number >= 0, got -1.5',
    'pool_bad_child_option.toml':
        ": tree.children[0].on_timeout: expected one of restart, ignore, got 'panic'",
    'pool_size_zero.toml': ': tree.children[0].size: expected an integer >= 1, got 0',
    'significant_permanent.toml':
        ': tree.children[0].significant: a significant child must be transient or temporary, '
        "got restart='permanent'",
    'significant_without_auto_shutdown.toml':
        ': tree.children[0].significant: a significant child needs '
        "auto_shutdown='any_significant' or 'all_significant' on its supervisor",
    'simple_one_for_one_with_children.toml':
        ': tree.children: a simple_one_for_one supervisor starts with no children; use '
        'template',
    'syntax_bad_string.toml': ":2: invalid TOML at column 11: Illegal character '\\n'",
    'syntax_duplicate_key.toml': ':4: invalid TOML at column 17: Cannot overwrite a value',
    'syntax_duplicate_table.toml':
        ":7: invalid TOML at column 22: Cannot declare ('errors', 'timeout_error') twice",
    'syntax_unclosed_array.toml': ':6: invalid TOML at the end of the file: Unclosed array',
    'syntax_unclosed_bracket.toml':
        ":1: invalid TOML at column 6: Expected ']' at the end of a table declaration",
    'template_wrong_strategy.toml':
        ': tree.children[0].template: template is only for simple_one_for_one, got '
        "strategy='one_for_all'",
    'top_level_unknown_table.toml':
        ": server: unknown top-level key 'server'; expected one of tree, errors, metrics, logs",
    'tree_array_of_tables.toml': ": tree: expected a table, got array [{'id': 'root'}]",
    'tree_not_table.toml': ": tree: expected a table, got string 'root'",
    'type_children_table.toml':
        ": tree.children: expected an array of tables, got table {'id': 'echo', 'worker': "
        "'workers.echo:Echo'}",
    'type_command_string.toml':
        ": tree.children[0].command: expected an array of strings, got string 'sleep 1000'",
    'type_env_not_strings.toml':
        ": tree.children[0].env: expected a table of strings, got {'RETRIES': 3}",
    'type_id_integer.toml': ': tree.children[0].id: expected a string, got integer 7',
    'type_kwargs_array.toml':
        ": tree.children[0].kwargs: expected a table, got array ['prefix', '> ']",
    'type_max_restarts_float.toml': ': tree.max_restarts: expected an integer, got float 3.0',
    'type_max_restarts_string.toml': ": tree.max_restarts: expected an integer, got string '3'",
    'type_max_seconds_datetime.toml':
        ': tree.max_seconds: expected a number, got datetime 2024-01-01T00:00:00',
    'type_significant_string.toml':
        ": tree.children[0].significant: expected true or false, got string 'yes'",
    'type_template_string.toml':
        ": tree.children[0].template: expected a table, got string 'workers.echo:Echo'",
    'unknown_key_nested.toml':
        ": tree.children[0].children[0].children[0].colour: unknown key 'colour'; expected one "
        'of id, type, worker, args, kwargs, restart, shutdown, significant, errors, heartbeat, '
        'heartbeat_timeout, max_memory_mb, max_calls, call_timeout, on_timeout, fallback, '
        'serializer, stable_after, circuit_timeout, env, backend, ray_options, autostart',
    'unknown_key_pool.toml':
        ": tree.children[0].strategy: unknown key 'strategy'; expected one of id, type, "
        'worker, size, max_overflow, checkout_timeout, max_restarts, max_seconds, args, '
        'kwargs, restart, shutdown, '
        'significant, errors, heartbeat, heartbeat_timeout, max_memory_mb, max_calls, '
        'call_timeout, on_timeout, fallback, serializer, stable_after, circuit_timeout, env, '
        'backend, ray_options',
    'unknown_key_program.toml':
        ": tree.children[0].args: unknown key 'args'; expected one of id, type, command, cwd, "
        'env, stop_signal, restart, shutdown, significant, errors, stable_after, '
        'circuit_timeout, start_seconds, autostart, user, group, umask',
    'unknown_key_root.toml':
        ": tree.max_restart: unknown key 'max_restart'; expected one of id, children, "
        'strategy, max_restarts, max_seconds, restart, shutdown, template, max_children, '
        'auto_shutdown, significant, errors, ray_address, directory',
    'unknown_key_supervisor.toml':
        ": tree.children[0].worker: unknown key 'worker'; expected one of id, type, children, "
        'strategy, max_restarts, max_seconds, restart, shutdown, template, max_children, '
        'auto_shutdown, significant, errors, ray_address',
    'unknown_key_template.toml':
        ": tree.children[0].template.command: unknown key 'command'; expected one of id, "
        'worker, args, kwargs, restart, shutdown, significant, errors, heartbeat, '
        'heartbeat_timeout, max_memory_mb, max_calls, call_timeout, on_timeout, fallback, '
        'serializer, stable_after, circuit_timeout, env, backend, ray_options',
    'unknown_key_worker.toml':
        ": tree.children[0].restrat: unknown key 'restrat'; expected one of id, type, worker, "
        'args, kwargs, restart, shutdown, significant, errors, heartbeat, heartbeat_timeout, '
        'max_memory_mb, max_calls, call_timeout, on_timeout, fallback, serializer, '
        'stable_after, circuit_timeout, env, backend, ray_options, autostart',
    'unknown_restart.toml':
        ': tree.children[1].restart: expected one of permanent, transient, temporary, got '
        "'sometimes'",
    'unknown_strategy.toml':
        ': tree.strategy: expected one of one_for_one, one_for_all, rest_for_one, '
        "simple_one_for_one, got 'all_for_one'",
    'unknown_type.toml':
        ": tree.children[0].type: expected one of worker, supervisor, pool, got 'program'",
    'worker_and_command.toml':
        ': tree.children[0].command: a child runs either worker (a Worker class) or command '
        '(an external program), not both',
    'zero_max_seconds.toml': ': tree.max_seconds: expected a number > 0, got 0',
    'simple_auto_shutdown.toml':
        ": tree.children[0].auto_shutdown: a simple_one_for_one supervisor cannot shut down "
        "automatically; expected 'never', got 'any_significant'",
}


def test_the_corpus_is_large_enough():
    assert len(EXPECTED) >= 30


def test_every_file_has_a_pinned_message_and_every_message_a_file():
    assert sorted(p.name for p in MALFORMED.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_fails_with_its_exact_message(name, monkeypatch):
    monkeypatch.chdir(MALFORMED)
    with pytest.raises(ConfigError) as caught:
        load(name)
    error = caught.value
    assert str(error) == name + EXPECTED[name]
    assert error.file == name
    # The parts of the message are also there as attributes, for the CLI and for tools.
    if error.line is not None:
        assert str(error).startswith(f"{name}:{error.line}: invalid TOML ")
    if error.field is not None:
        assert str(error).startswith(f"{name}: {error.field}: ")
