"""Spec validation: every invalid field is a ConfigError naming the field and the value."""

from __future__ import annotations

import pytest

from supervisor import ConfigError, Pool, Supervisor, child
from supervisor.specs import ChildSpec, PoolSpec, SupervisorSpec
from workers.echo import Echo


def test_child_defaults_match_the_design():
    spec = child("w", Echo)
    assert isinstance(spec, ChildSpec)
    assert (spec.restart, spec.shutdown, spec.significant, spec.call_timeout,
            spec.on_timeout, spec.serializer, spec.stable_after, spec.circuit_timeout) == (
        "permanent", 5.0, False, 60.0, "restart", "msgpack", 5.0, 60.0)
    assert spec.worker_class is Echo


def test_worker_as_import_string_is_resolved_at_construction():
    assert child("w", "workers.echo:Echo").worker_class is Echo


def test_supervisor_defaults_match_the_design():
    spec = Supervisor("root")
    assert isinstance(spec, SupervisorSpec)
    assert (spec.strategy, spec.max_restarts, spec.max_seconds, spec.restart, spec.shutdown,
            spec.auto_shutdown) == ("one_for_one", 3, 5.0, "permanent", "infinity", "never")


def test_specs_are_frozen():
    spec = child("w", Echo)
    with pytest.raises(AttributeError):
        spec.restart = "temporary"


@pytest.mark.parametrize("build, pattern", [
    (lambda: child("w", Echo, restart="sometimes"),
     r"^restart: expected one of permanent, transient, temporary, got 'sometimes'$"),
    (lambda: child("w", Echo, shutdown=-1), r"^shutdown: expected a number >= 0, got -1$"),
    (lambda: child("w", Echo, shutdown="never"),
     r"^shutdown: expected one of brutal_kill, infinity, got 'never'$"),
    (lambda: child("a/b", Echo), r"^id: expected a non-empty string without '/'"),
    (lambda: child("", Echo), r"^id: expected a non-empty string"),
    (lambda: child("w", Echo, restrat="temporary"), r"^restrat: unknown key 'restrat'; "
                                                      r"expected one of id, worker, args"),
    (lambda: child("w", dict), r"^worker: expected a Worker subclass or an import string, "
                               r"got <class 'dict'>$"),
    (lambda: child("w", "no.such.module:Thing"),
     r"^worker: cannot import 'no.such.module': No module named 'no'$"),
    (lambda: child("w", "workers.echo:Nope"),
     r"^worker: module 'workers.echo' has no attribute 'Nope'$"),
    (lambda: child("w", "workers.echo.Echo"),
     r"^worker: expected an import string 'package.module:Class', got 'workers.echo.Echo'$"),
    (lambda: child("w", Echo, significant=True),
     r"^significant: a significant child must be transient or temporary"),
    (lambda: child("w", Echo, heartbeat=0), r"^heartbeat: expected a number > 0, got 0$"),
    (lambda: child("w", Echo, max_calls=0), r"^max_calls: expected an integer >= 1, got 0$"),
    (lambda: child("w", Echo, on_timeout="panic"),
     r"^on_timeout: expected one of restart, ignore, got 'panic'$"),
    (lambda: child("w", Echo, serializer="json"),
     r"^serializer: expected one of msgpack, pickle, got 'json'$"),
    (lambda: child("w", Echo, call_timeout=True),
     r"^call_timeout: expected a number > 0, got True$"),
    (lambda: child("w", Echo, errors={"timeout_eror": {}}), r"timeout_eror"),
    (lambda: Supervisor("r", strategy="one_for_some"),
     r"^strategy: expected one of one_for_one, one_for_all, rest_for_one, "
     r"simple_one_for_one, got 'one_for_some'$"),
    (lambda: Supervisor("r", max_restarts=-1), r"^max_restarts: expected an integer >= 0, "
                                               r"got -1$"),
    (lambda: Supervisor("r", max_seconds=0), r"^max_seconds: expected a number > 0, got 0$"),
    (lambda: Supervisor("r", children=[child("a", Echo), child("a", Echo)]),
     r"^children\[1\]\.id: duplicate child id 'a'$"),
    (lambda: Supervisor("r", strategy="simple_one_for_one"),
     r"^template: strategy 'simple_one_for_one' needs a template child spec$"),
    (lambda: Supervisor("r", template=child("t", Echo)),
     r"^template: template is only for simple_one_for_one"),
    (lambda: Supervisor("r", strategy="simple_one_for_one", template=child("t", Echo),
                        children=[child("a", Echo)]),
     r"^children: a simple_one_for_one supervisor starts with no children"),
    (lambda: Supervisor("r", children=[child("a", Echo, restart="transient",
                                             significant=True)]),
     r"^children\[0\]\.significant: a significant child needs auto_shutdown"),
    (lambda: Supervisor("r", children=["not a spec"]),
     r"^children\[0\]: expected a child\(...\), Supervisor\(...\) or Pool\(...\)"),
    (lambda: Supervisor("r", auto_shutdown="sometimes"),
     r"^auto_shutdown: expected one of never, any_significant, all_significant"),
    (lambda: Supervisor("r", bogus=1), r"^bogus: unknown key 'bogus'"),
    # OTP's significant_simple: no auto_shutdown, and so no significant template, for a
    # simple_one_for_one supervisor.
    (lambda: Supervisor("r", strategy="simple_one_for_one", auto_shutdown="any_significant",
                        template=child("j", Echo, restart="transient")),
     r"^auto_shutdown: a simple_one_for_one supervisor cannot shut down automatically; "
     r"expected 'never', got 'any_significant'$"),
    (lambda: Supervisor("r", strategy="simple_one_for_one", auto_shutdown="all_significant",
                        template=child("j", Echo, restart="transient", significant=True)),
     r"^auto_shutdown: a simple_one_for_one supervisor cannot shut down automatically"),
    (lambda: Supervisor("r", strategy="simple_one_for_one",
                        template=child("j", Echo, restart="transient", significant=True)),
     r"^template\.significant: a significant template needs auto_shutdown="),
    (lambda: Pool("p", Echo, size=0), r"^size: expected an integer >= 1, got 0$"),
    (lambda: Pool("p", Echo, max_restarts=-1), r"^max_restarts: expected an integer >= 0"),
    (lambda: Pool("p", Echo, max_seconds=0), r"^max_seconds: expected a number > 0"),
])
def test_invalid_specs_raise_config_error_naming_the_field(build, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        build()
    assert isinstance(info.value, ValueError)


def test_pool_is_a_supervisor_of_numbered_identical_workers():
    pool = Pool("py", Echo, size=3, restart="transient")
    assert isinstance(pool, PoolSpec)
    assert [c.id for c in pool.children] == ["py-0", "py-1", "py-2"]
    assert {c.restart for c in pool.children} == {"transient"}
    assert pool.strategy == "one_for_one"
    assert (pool.max_restarts, pool.max_seconds) == (3, 5.0)  # a supervisor's defaults
    tuned = Pool("py", Echo, size=2, max_restarts=10, max_seconds=2.5)
    assert (tuned.max_restarts, tuned.max_seconds) == (10, 2.5)
    assert {c.restart for c in tuned.children} == {"permanent"}  # not worker options


def test_nested_tree_builds():
    tree = Supervisor("root", strategy="rest_for_one", children=[
        child("a", Echo),
        Supervisor("jobs", strategy="simple_one_for_one",
                   template=child("job", Echo, restart="transient")),
        Pool("py", Echo, size=2),
    ])
    assert [c.id for c in tree.children] == ["a", "jobs", "py"]
    assert tree.find("jobs").template.id == "job"
