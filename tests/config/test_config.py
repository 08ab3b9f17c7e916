"""The TOML loader: good files become exactly the specs the factories build, and any
document at all becomes either a spec or a ConfigError (never another exception)."""

from __future__ import annotations

import inspect
import json
import pathlib
import tomllib

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import config
from supervisor._config_schema import POOL, PROGRAM, ROOT, SUPERVISOR, TEMPLATE, WORKER
from supervisor.config import format_tree, load, loads
from supervisor.errors import ConfigError
from supervisor.specs import (
    ChildSpec,
    Pool,
    PoolSpec,
    ProgramSpec,
    Supervisor,
    SupervisorSpec,
    child,
    program,
)
from workers.echo import Echo

GOOD = pathlib.Path(__file__).parent / "good"
ECHO = "workers.echo:Echo"


def assert_same_spec(expected, actual, path="tree"):
    """Compare two specs field by field (recursing into children) so a failure names the field."""
    assert type(expected) is type(actual), path
    for field in attrs.fields(type(expected)):
        if not field.eq:
            continue
        want, got = getattr(expected, field.name), getattr(actual, field.name)
        if field.name == "children":
            assert len(want) == len(got), f"{path}.children"
            for index, (one, other) in enumerate(zip(want, got, strict=True)):
                assert_same_spec(one, other, f"{path}.children[{index}]")
        elif field.name == "template" and want is not None:
            assert_same_spec(want, got, f"{path}.template")
        else:
            assert want == got, f"{path}.{field.name}"
    assert expected == actual


def full_jobs() -> SupervisorSpec:
    """The simple_one_for_one supervisor of good/full.toml, with its template."""
    job = child(
        "job", ECHO, args=["job"], kwargs={"prefix": "job: "}, restart="transient", shutdown=1,
        significant=False, errors={"health_check_error": {"max_retries": 0}}, heartbeat=0.5,
        heartbeat_timeout=1.5, max_memory_mb=64.5, max_calls=1, call_timeout=2,
        on_timeout="restart", fallback="spare", serializer="msgpack", stable_after=0,
        circuit_timeout=0, env={"MODE": "job"},
    )
    return Supervisor(
        "jobs", strategy="simple_one_for_one", max_restarts=0, max_seconds=1,
        restart="temporary", shutdown="brutal_kill", template=job, max_children=50,
        significant=True,
        errors={"session_error": {"recovery": "failover"}},
    )


def full_pool() -> PoolSpec:
    """The pool of good/full.toml."""
    return Pool(
        "py", ECHO, 3, max_overflow=2, checkout_timeout=0.25, max_restarts=9, max_seconds=2.5,
        args=["pooled"],
        kwargs={"prefix": "pool> "}, restart="transient", shutdown=4, heartbeat=3,
        heartbeat_timeout=9, max_memory_mb=512, max_calls=100, call_timeout=1.5,
        on_timeout="ignore", fallback="echo", serializer="pickle", stable_after=2,
        circuit_timeout=30, errors={"communication_error": {"backoff": "decorrelated_jitter"}},
        env={"MODE": "pool"},
    )


def full_tree() -> SupervisorSpec:
    """What good/full.toml says, built with the Python factories."""
    echo = child(
        "echo", ECHO, args=(1, "two", 3.5, True), kwargs={"prefix": "> ", "fail_init": False},
        restart="transient", shutdown="brutal_kill", significant=True,
        errors={"python_error": {"recovery": "backoff_retry", "max_retries": 2,
                                 "backoff": "linear"}},
        heartbeat=2, heartbeat_timeout=6.5, max_memory_mb=256, max_calls=1000,
        call_timeout=9.5, on_timeout="ignore", fallback="py", serializer="pickle",
        stable_after=15, circuit_timeout=120.0, env={"MODE": "echo"}, autostart=False,
    )
    sleeper = program(
        "sleeper", ["sleep", "1000"], cwd="/tmp", env={"LANG": "C", "MODE": "test"},
        stop_signal="SIGINT", restart="temporary", shutdown=2.5, significant=True,
        errors={"resource_error": {"severity": "warning", "recovery": "abandon"}},
        stable_after=1, circuit_timeout=10, start_seconds=0.5, autostart=True, user=0,
        group="root", umask="027",
    )
    jobs = full_jobs()
    one = child("one", ECHO, backend="ray", ray_options={
        "num_cpus": 0.5, "num_gpus": 0, "memory": 1_000_000, "resources": {"accel": 1},
        "runtime_env": {"env_vars": {"MODE": "ray"}}, "scheduling_strategy": "DEFAULT",
        "node_id": "0123abcd", "soft": True, "start_timeout": 30})
    workers = Supervisor("workers", [one], strategy="one_for_all", shutdown=60,
                         auto_shutdown="all_significant", ray_address="ray-head.example:6379")
    pool = full_pool()
    return Supervisor(
        "root", [echo, sleeper, jobs, workers, pool], strategy="rest_for_one", max_restarts=7,
        max_seconds=12.5, restart="transient", shutdown=30, max_children=10,
        auto_shutdown="any_significant", significant=False, ray_address="127.0.0.1:6379",
        errors={"timeout_error": {"severity": "minor", "recovery": "immediate_retry",
                                  "max_retries": 4, "backoff": "fibonacci"},
                "connection_error": {"backoff": [0.5, 1, 2.5]}},
    )


def test_full_file_gives_the_specs_the_factories_give_field_by_field():
    assert_same_spec(full_tree(), load(GOOD / "full.toml"))


def test_full_file_resolves_every_import_string():
    tree = load(GOOD / "full.toml")
    assert tree.children[0].worker_class is Echo
    assert tree.children[2].template.worker_class is Echo
    assert [c.worker_class for c in tree.children[4].children] == [Echo, Echo, Echo]


def _parameters(factory) -> set[str]:
    return {name for name, p in inspect.signature(factory).parameters.items()
            if p.kind is not inspect.Parameter.VAR_KEYWORD}


def test_schema_keys_are_the_factories_parameters():
    child_options = _parameters(child) - {"id", "worker"}
    assert set(WORKER.keys) == _parameters(child) | {"type"}
    # A template's children and a pool's workers are started when asked for: no autostart.
    assert set(TEMPLATE.keys) == _parameters(child) - {"autostart"}
    assert set(PROGRAM.keys) == _parameters(program) | {"type"}
    assert set(SUPERVISOR.keys) == _parameters(Supervisor) | {"type"}
    assert set(ROOT.keys) == _parameters(Supervisor) | {"directory"}
    assert set(POOL.keys) == _parameters(Pool) | child_options - {"autostart"} | {"type"}


def _tables_of_kind(document: dict) -> dict[str, list[dict]]:
    """The tables of good/full.toml grouped by kind, as the loader routes them."""
    found: dict[str, list[dict]] = {"root": [document["tree"]], "worker": [], "program": [],
                                    "supervisor": [], "pool": [], "template": []}

    def visit(table: dict) -> None:
        for entry in table.get("children", []):
            kind = entry.get("type", "worker")
            kind = "program" if kind == "worker" and "command" in entry else kind
            found[kind].append(entry)
            visit(entry)
        if "template" in table:
            found["template"].append(table["template"])

    visit(document["tree"])
    return found


def test_full_file_uses_every_key_of_every_kind():
    document = tomllib.loads((GOOD / "full.toml").read_text())
    tables = _tables_of_kind(document)
    used = {kind: set().union(*map(set, group)) for kind, group in tables.items()}
    assert used["worker"] == set(WORKER.keys)
    # A Ray child cannot take max_calls / max_memory_mb, which the template and the pool
    # use: only the worker "one" shows backend and ray_options.
    ray_keys = {"backend", "ray_options"}
    assert used["template"] == set(TEMPLATE.keys) - ray_keys
    assert used["program"] == set(PROGRAM.keys)
    assert used["supervisor"] == set(SUPERVISOR.keys)
    # A pool cannot be significant (see the note at the top of full.toml).
    assert used["pool"] == set(POOL.keys) - {"significant"} - ray_keys
    # The root's errors come from the top-level [errors] tables.
    assert used["root"] == set(ROOT.keys) - {"errors", "template"}
    assert set(document["errors"]) == {"timeout_error", "connection_error"}
    assert set(document["errors"]["timeout_error"]) == {"severity", "recovery", "max_retries",
                                                         "backoff"}


def test_nested_children_three_levels_deep():
    expected = Supervisor("root", [
        Supervisor("a", [
            child("a1", ECHO),
            Supervisor("b", [
                Supervisor("c", [child("leaf", ECHO, restart="temporary"),
                                 program("cmd", ["sleep", "5"])]),
                child("b2", ECHO),
            ], strategy="rest_for_one"),
        ], strategy="one_for_all"),
        child("z", ECHO),
    ])
    actual = load(GOOD / "nested.toml")
    assert_same_spec(expected, actual)
    assert actual.children[0].children[1].children[0].children[1].command == ("sleep", "5")


def test_minimal_file_gives_supervisor_defaults():
    assert_same_spec(Supervisor("root"), load(str(GOOD / "minimal.toml")))


def test_design_example_loads():
    expected = Supervisor("root", [
        child("echo", ECHO),
        Supervisor("jobs", [program("sleeper", ["sleep", "1000"])], strategy="one_for_all"),
    ], max_restarts=3, max_seconds=5.0, errors={"timeout_error": {"max_retries": 4}})
    assert_same_spec(expected, load(GOOD / "design.toml"))


def test_template_of_a_simple_one_for_one_supervisor():
    tree = loads('[tree]\nid = "r"\nstrategy = "simple_one_for_one"\n'
                 '[tree.template]\nid = "job"\nworker = "workers.echo:Echo"\n'
                 'restart = "temporary"\n')
    assert tree.children == ()
    assert tree.template == child("job", ECHO, restart="temporary")


def test_tree_wide_errors_may_also_be_written_under_tree():
    top = loads('[tree]\nid = "r"\n[errors.timeout_error]\nmax_retries = 4\n')
    under = loads('[tree]\nid = "r"\n[tree.errors.timeout_error]\nmax_retries = 4\n')
    assert top.errors == under.errors == {"timeout_error": {"max_retries": 4}}


def test_a_row_may_opt_in_to_escalate_and_a_bad_choice_is_named():
    tree = loads('[tree]\nid = "r"\n[errors.connection_error]\non_exhausted = "escalate"\n')
    assert tree.errors == {"connection_error": {"on_exhausted": "escalate"}}
    with pytest.raises(ConfigError, match=r"errors\.connection_error\.on_exhausted: expected "
                                          r"one of abandon, escalate, got 'explode'"):
        loads('[tree]\nid = "r"\n[errors.connection_error]\non_exhausted = "explode"\n')


def test_per_child_errors_stay_on_their_child():
    tree = loads('[tree]\nid = "r"\n[[tree.children]]\nid = "w"\nworker = "workers.echo:Echo"\n'
                 '[tree.children.errors.python_error]\nmax_retries = 2\n'
                 '[[tree.children]]\nid = "v"\nworker = "workers.echo:Echo"\n')
    assert tree.errors is None
    assert tree.children[0].errors == {"python_error": {"max_retries": 2}}
    assert tree.children[1].errors is None


def test_a_child_table_with_command_is_a_program():
    tree = loads('[tree]\nid = "r"\n[[tree.children]]\nid = "p"\ncommand = ["true"]\n')
    assert tree.children == (program("p", ["true"]),)
    assert isinstance(tree.children[0], ProgramSpec)


def test_pool_table_gives_a_pool_spec():
    tree = loads('[tree]\nid = "r"\n[[tree.children]]\nid = "py"\ntype = "pool"\n'
                 'worker = "workers.echo:Echo"\nsize = 2\n')
    assert isinstance(tree.children[0], PoolSpec)
    assert [c.id for c in tree.children[0].children] == ["py-0", "py-1"]


def test_loads_names_the_string_in_errors():
    with pytest.raises(ConfigError) as caught:
        loads('[tree]\nid = "r"\nmax_restarts = -1\n')
    assert str(caught.value) == "<string>: tree.max_restarts: expected an integer >= 0, got -1"
    with pytest.raises(ConfigError) as caught:
        loads("[tree\n", file="inline.toml")
    assert str(caught.value) == (
        "inline.toml:1: invalid TOML at column 6: Expected ']' at the end of a table declaration")


def test_error_carries_file_line_field_value_and_the_spec_error_as_cause():
    with pytest.raises(ConfigError) as caught:
        loads('[tree]\nid = "r"\n[[tree.children]]\nid = "w"\nworker = "workers.echo:Echo"\n'
              'restart = "sometimes"\n', file="t.toml")
    error = caught.value
    assert (error.file, error.line, error.field, error.value) == (
        "t.toml", None, "tree.children[0].restart", "sometimes")
    assert isinstance(error.__cause__, ConfigError)
    assert error.__cause__.field == "tree.children[0].restart"
    assert error.__cause__.__cause__.field == "restart"


def test_syntax_error_has_a_line_and_no_field():
    with pytest.raises(ConfigError) as caught:
        loads('[tree]\nid = "r"\n\nmax_restarts = = 3\n', file="t.toml")
    assert (caught.value.line, caught.value.field) == (4, None)
    assert str(caught.value) == "t.toml:4: invalid TOML at column 16: Invalid value"


def test_missing_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load(missing)
    assert str(caught.value) == f"{missing}: cannot read the file: No such file or directory"
    assert caught.value.file == str(missing)


def test_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value) == f"{tmp_path}: cannot read the file: Is a directory"


def test_an_import_that_raises_anything_is_reported_on_the_worker_field(tmp_path, monkeypatch):
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        loads('[tree]\nid = "r"\n[[tree.children]]\nid = "w"\n'
              'worker = "explodes_on_import:W"\n', file="t.toml")
    assert str(caught.value) == ("t.toml: tree.children[0].worker: importing "
                                 "'explodes_on_import:W' failed: RuntimeError: boom")
    assert isinstance(caught.value.__cause__.__cause__, RuntimeError)


def test_an_unexpected_exception_from_a_factory_becomes_a_config_error(monkeypatch):
    def broken(**options):
        raise KeyError("surprise")

    monkeypatch.setattr(config, "program", broken)
    with pytest.raises(ConfigError) as caught:
        loads('[tree]\nid = "r"\n[[tree.children]]\nid = "p"\ncommand = ["true"]\n',
              file="t.toml")
    assert str(caught.value) == "t.toml: tree.children[0]: cannot build this spec: KeyError: " \
                                "'surprise'"


def test_keyboard_interrupt_is_not_swallowed(monkeypatch):
    def interrupted(**options):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "program", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loads('[tree]\nid = "r"\n[[tree.children]]\nid = "p"\ncommand = ["true"]\n')


FULL_TREE_TEXT = """\
root (supervisor): rest_for_one, max_restarts=7, max_seconds=12.5, auto_shutdown=any_significant
├── echo (worker): workers.echo:Echo, restart=transient, significant
├── sleeper (program): $ sleep 1000, restart=temporary, significant
├── jobs (supervisor): simple_one_for_one, max_restarts=0, max_seconds=1, \
restart=temporary, significant
│   └── job (template worker): workers.echo:Echo, restart=transient
├── workers (supervisor): one_for_all, max_restarts=3, max_seconds=5, \
auto_shutdown=all_significant, restart=permanent
│   └── one (worker): workers.echo:Echo, restart=permanent
└── py (pool): 3 x workers.echo:Echo, restart=transient"""

NESTED_TREE_TEXT = """\
root (supervisor): one_for_one, max_restarts=3, max_seconds=5
├── a (supervisor): one_for_all, max_restarts=3, max_seconds=5, restart=permanent
│   ├── a1 (worker): workers.echo:Echo, restart=permanent
│   └── b (supervisor): rest_for_one, max_restarts=3, max_seconds=5, restart=permanent
│       ├── c (supervisor): one_for_one, max_restarts=3, max_seconds=5, restart=permanent
│       │   ├── leaf (worker): workers.echo:Echo, restart=temporary
│       │   └── cmd (program): $ sleep 5, restart=permanent
│       └── b2 (worker): workers.echo:Echo, restart=permanent
└── z (worker): workers.echo:Echo, restart=permanent"""


@pytest.mark.parametrize("name, text", [
    ("full.toml", FULL_TREE_TEXT),
    ("nested.toml", NESTED_TREE_TEXT),
    ("minimal.toml", "root (supervisor): one_for_one, max_restarts=3, max_seconds=5"),
])
def test_format_tree(name, text):
    assert format_tree(load(GOOD / name)) == text


def test_format_tree_of_a_python_tree_names_classes_and_quotes_commands():
    tree = Supervisor("root", [
        child("w", Echo),
        program("p", ["echo", "two words"]),
        Pool("py", Echo, size=1),
    ], max_seconds=0.5)
    assert format_tree(tree) == (
        "root (supervisor): one_for_one, max_restarts=3, max_seconds=0.5\n"
        "├── w (worker): workers.echo:Echo, restart=permanent\n"
        "├── p (program): $ echo 'two words', restart=permanent\n"
        "└── py (pool): 1 x workers.echo:Echo, restart=permanent")


@pytest.mark.parametrize("path", sorted(GOOD.glob("*.toml")), ids=lambda p: p.name)
def test_every_good_file_loads_and_prints(path):
    tree = load(path)
    assert isinstance(tree, SupervisorSpec)
    assert format_tree(tree).splitlines()[0].startswith(f"{tree.id} (supervisor): ")


# --- any document: a spec or a ConfigError, never another exception -------------------------

def toml_value(value) -> str:
    """Write one value as TOML (inline), for the documents Hypothesis makes up."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    pairs = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
    return "{ " + pairs + " }"


ALL_KEYS = sorted(set(WORKER.keys) | set(PROGRAM.keys) | set(SUPERVISOR.keys) | set(POOL.keys)
                  | {"colour"})
# Import strings are the one value the loader acts on (it imports them): keep to safe ones.
WORKER_VALUES = st.sampled_from([ECHO, "no_such_module_xyz:W", "workers.echo:Nope",
                                 "collections:OrderedDict", "workers.echo", ":", 3])
SCALARS = (st.integers(-3, 3) | st.floats(allow_nan=True) | st.booleans()
           | st.sampled_from(["", "x", "permanent", "transient", "one_for_all", "pool",
                              "supervisor", "brutal_kill", "SIGTERM", "a/b"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["a", "timeout_error", "max_retries"]),
                                        inner, max_size=2), max_leaves=6)


@st.composite
def child_tables(draw) -> dict:
    keys = draw(st.lists(st.sampled_from(ALL_KEYS), max_size=6, unique=True))
    table = {key: draw(WORKER_VALUES if key == "worker" else VALUES) for key in keys}
    if "children" in table and draw(st.booleans()):
        table["children"] = [{"id": "inner", "worker": ECHO}]
    return table


@settings(max_examples=300, deadline=None)
@given(st.lists(child_tables(), max_size=3), st.dictionaries(st.sampled_from(ALL_KEYS), VALUES,
                                                             max_size=2))
def test_any_document_is_a_spec_or_a_config_error(children, root_options):
    lines = ["[tree]", 'id = "root"']
    lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in root_options.items() if k != "id"]
    for table in children:
        lines.append("[[tree.children]]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    try:
        tree = loads("\n".join(lines) + "\n", file="gen.toml")
    except ConfigError as error:
        assert str(error).startswith("gen.toml")
        assert error.file == "gen.toml"
    else:
        assert isinstance(tree, SupervisorSpec)
        assert all(isinstance(c, ChildSpec | ProgramSpec | SupervisorSpec)
                   for c in tree.children)
