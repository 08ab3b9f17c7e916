"""`python -m supervisor reload` and SIGHUP against a real `run` service: the file read
again, its difference applied, unchanged children untouched (same pid)."""

from __future__ import annotations

import json
import re
import signal

import pytest

import supervisor
from supervisor import ConfigError, Supervisor, child

from .._service import running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ECHO = "workers.echo:Echo"


def value(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)  # strings, numbers and booleans are written alike in TOML


def table(child_id: str, *, nested: bool = False, **keys) -> str:
    """One ``[[tree.children]]`` table (``[[tree.children.children]]`` when nested)."""
    head = "[[tree.children.children]]" if nested else "[[tree.children]]"
    if "type" not in keys:
        keys = {"worker": ECHO, **keys}
    return "\n".join([head, f'id = "{child_id}"',
                      *(f"{k} = {value(v)}" for k, v in keys.items())]) + "\n"


def jobs(*children: str, **keys) -> str:
    return table("jobs", type="supervisor", **keys) + "".join(children)


def tree(*tables: str, **root) -> str:
    root = {"max_restarts": 5, **root}
    return "[tree]\nid = \"reload\"\n" + "".join(f"{k} = {value(v)}\n" for k, v in
                                                root.items()) + "\n".join(tables)


A, B, C = table("a"), table("b"), table("c", kwargs={"prefix": "old "})
X, Y = table("x", nested=True), table("y", nested=True)
TREE = tree(A, B, C, jobs(X, Y))


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as start:

        def _start(tree: str = TREE):
            svc = start(tree)
            svc.wait_line("is up")
            return svc

        yield _start


def rewrite(svc, text: str) -> None:
    svc.toml.write_text(text)


def status(svc) -> dict:
    done = svc.cmd("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def pids(svc) -> dict[str, int | None]:
    """path -> pid of every node below the root, in the order status lists them."""
    found = {}

    def walk(node):
        for sub in node["children"]:
            found[sub["path"]] = sub["pid"]
            walk(sub) if "children" in sub else None

    walk(status(svc))
    return found


def order(svc, path: str = "") -> list[str]:
    node = status(svc)
    for part in filter(None, path.split("/")):
        node = next(n for n in node["children"] if n["id"] == part)
    return [n["id"] for n in node["children"]]


def test_added_removed_changed_and_unchanged_children(service):
    svc = service()
    before = pids(svc)
    rewrite(svc, tree(A, table("d"), table("c", kwargs={"prefix": "new "}), jobs(X, Y)))
    done = svc.cmd("reload")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"reloaded .*tree\.toml: 1 added, 1 removed, 1 changed, 0 updated, "
                        r"4 unchanged", lines[0]), lines
    after = pids(svc)
    assert lines[1:] == ["  removed  b: stopped",
                         f"  added    d: started (pid {after['d']})",
                         f"  changed  c: started (pid {after['c']})"]
    assert list(after) == ["a", "d", "c", "jobs", "jobs/x", "jobs/y"]  # the file's order
    assert "b" not in after
    for same in ("a", "jobs", "jobs/x", "jobs/y"):
        assert after[same] == before[same], same
    assert after["c"] != before["c"] and after["d"] is not None
    with supervisor.connect(svc.socket) as app:
        assert app.call("c", "echo", "hi") == "new hi"  # the new spec's kwargs
        assert app.call("d", "echo", "hi") == "hi"


def test_a_nested_supervisor_is_updated_in_place(service):
    svc = service()
    before = pids(svc)
    y = table("y", nested=True, kwargs={"prefix": "y "})
    rewrite(svc, tree(A, B, C, jobs(X, table("z", nested=True), y, strategy="rest_for_one",
                                    max_restarts=7)))
    done = svc.cmd("reload")
    assert done.returncode == 0, done.stderr
    assert "  updated  jobs: applied" in done.stdout, done.stdout
    after = pids(svc)
    # The supervisor keeps its process and its unchanged child; y is restarted, z added.
    assert after["jobs"] == before["jobs"] and after["jobs/x"] == before["jobs/x"]
    assert after["jobs/y"] != before["jobs/y"] and after["jobs/z"] is not None
    for same in ("a", "b", "c"):
        assert after[same] == before[same]
    assert order(svc, "jobs") == ["x", "z", "y"]
    node = next(n for n in status(svc)["children"] if n["id"] == "jobs")
    assert node["strategy"] == "rest_for_one"


def test_a_supervisor_that_becomes_a_pool_is_restarted_whole(service):
    svc = service()
    before = pids(svc)
    rewrite(svc, tree(A, B, C, table("jobs", type="pool", worker=ECHO, size=2)))
    done = svc.cmd("reload")
    assert done.returncode == 0, done.stderr
    after = pids(svc)
    assert after["jobs"] != before["jobs"]
    assert sorted(p for p in after if p.startswith("jobs/")) == ["jobs/jobs-0", "jobs/jobs-1"]
    assert all(after[same] == before[same] for same in ("a", "b", "c"))


def test_a_bad_file_changes_nothing_and_says_why(service):
    svc = service()
    before = pids(svc)
    rewrite(svc, tree(A, table("b", restart="sometimes"), C, jobs(X)))
    done = svc.cmd("reload")
    assert done.returncode == 2
    assert re.fullmatch(r"error: \S*tree\.toml: tree\.children\[1\]\.restart: expected one "
                        r"of permanent, transient, temporary, got 'sometimes'\n", done.stderr)
    assert pids(svc) == before
    rewrite(svc, TREE.replace('id = "reload"', 'id = "renamed"', 1))
    done = svc.cmd("reload")
    assert done.returncode == 2
    assert re.match(r"error: \S*tree\.toml: tree\.id: the root's id cannot change", done.stderr)
    svc.toml.write_text("[tree\n")
    done = svc.cmd("reload")
    assert done.returncode == 2
    assert re.match(r"error: \S*tree\.toml:1: invalid TOML", done.stderr), done.stderr
    assert pids(svc) == before
    assert svc.proc.poll() is None


def test_dry_run_prints_the_plan_and_changes_nothing(service):
    svc = service()
    before = pids(svc)
    rewrite(svc, tree(A, B, table("c", kwargs={"prefix": "new "}),
                      jobs(X, table("w", nested=True))))
    done = svc.cmd("reload", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"plan for {svc.toml} (dry run, nothing changed): 1 added, 1 removed, 1 changed, "
        "1 updated, 3 unchanged",
        "  changed  c (kwargs)",
        "  updated  jobs (children)",
        "  removed  jobs/y",
        "  added    jobs/w",
    ]
    plan = json.loads(svc.cmd("reload", "--dry-run", "--json").stdout)
    assert plan["dry_run"] is True and plan["outcomes"] == []
    assert [(c["action"], c["path"]) for c in plan["changes"]] == [
        ("changed", "c"), ("updated", "jobs"), ("removed", "jobs/y"), ("added", "jobs/w")]
    assert pids(svc) == before
    assert order(svc, "jobs") == ["x", "y"]


def test_sighup_reloads_and_a_bad_file_on_sighup_keeps_the_tree(service):
    svc = service()
    before = pids(svc)
    rewrite(svc, tree(A, table("e"), C, jobs(X, Y)))
    start = len(svc.lines)
    svc.proc.send_signal(signal.SIGHUP)
    svc.wait_line("reloaded ", start=start)
    after = pids(svc)
    assert list(after) == ["a", "e", "c", "jobs", "jobs/x", "jobs/y"]
    assert all(after[p] == before[p] for p in ("a", "c", "jobs", "jobs/x", "jobs/y"))
    rewrite(svc, tree(A, B, C, jobs(X, Y), max_restarts=-1))
    start = len(svc.lines)
    svc.proc.send_signal(signal.SIGHUP)
    line = svc.lines[svc.wait_line("SIGHUP: reload refused, the tree is unchanged", start=start)]
    assert "tree.toml: tree.max_restarts: " in line
    assert pids(svc) == after
    assert svc.proc.poll() is None
    assert svc.stop() == 0


def test_rest_for_one_follows_the_files_order_after_a_reload(service):
    svc = service(tree(A, B, C, jobs(X, Y), strategy="rest_for_one"))
    rewrite(svc, tree(A, B, table("n"), C, jobs(X, Y), strategy="rest_for_one"))
    assert svc.cmd("reload").returncode == 0
    before = pids(svc)
    assert list(before)[:4] == ["a", "b", "n", "c"]
    start = len(svc.lines)
    assert svc.cmd("signal", "n", "SIGKILL").returncode == 0
    svc.wait_line("child.restarted jobs ", start=start)  # the last of the group
    after = pids(svc)
    # n and every child after it in the new order were restarted; those before it were not.
    assert (after["a"], after["b"]) == (before["a"], before["b"])
    assert after["c"] != before["c"] and after["jobs"] != before["jobs"]


def test_a_child_that_fails_to_start_is_reported_and_the_rest_applied(service):
    svc = service()
    rewrite(svc, tree(A, B, C, jobs(X, Y), table("broken", kwargs={"fail_init": True}),
                      table("fine")))
    done = svc.cmd("reload")
    assert done.returncode == 1
    assert re.search(r"^  added    broken: failed: initialization_error: RuntimeError: init "
                     r"asked to fail$", done.stdout, re.M), done.stdout
    assert re.search(r"^  added    fine: started \(pid \d+\)$", done.stdout, re.M)
    nodes = {n["id"]: n for n in status(svc)["children"]}
    assert (nodes["broken"]["state"], nodes["broken"]["pid"]) == ("stopped", None)
    assert nodes["fine"]["state"] == "running"
    # The file is applied: the same file again is nothing to do.
    again = svc.cmd("reload")
    assert again.returncode == 0 and "0 added, 0 removed" in again.stdout


def test_telemetry_events_for_each_change(service):
    svc = service()
    rewrite(svc, tree(A, table("e"), table("c", kwargs={"prefix": "new "}), jobs(X, Y)))
    assert svc.cmd("reload").returncode == 0
    events = [json.loads(line) for line in svc.cmd("events", "--json").stdout.splitlines()]
    reload = [(e["event"], e["path"]) for e in events if e["event"].startswith("reload.")]
    assert reload == [("reload.child_removed", "b"), ("reload.child_added", "e"),
                      ("reload.child_changed", "c"), ("reload.applied", "")]


def test_the_python_api_reloads_a_service_and_refuses_a_tree_without_a_file(service):
    svc = service()
    rewrite(svc, tree(A, table("e"), C, jobs(X, Y)))
    with supervisor.connect(svc.socket) as app:
        report = app.reload(dry_run=True)
        assert [(c.action, c.path) for c in report.changes] == [("removed", "b"),
                                                                ("added", "e")]
        report = app.reload()
        assert [(o.action, o.path, o.result) for o in report.outcomes] == [
            ("removed", "b", "stopped"), ("added", "e", "started")]
    with supervisor.start(Supervisor("py", [child("a", ECHO)])) as app:
        with pytest.raises(ConfigError, match=r"^reload: reload needs a tree run from a file"):
            app.reload()


def test_removals_stop_in_reverse_start_order_with_terminate(service, tmp_path):
    notes = tmp_path / "notes"
    noted = {"worker": "tests.runtime._workers:Noted", "kwargs": {"notes": str(notes)}}
    svc = service(tree(table("a", **noted), table("b", **noted), table("c", **noted)))
    notes.write_text("")
    rewrite(svc, tree(table("a", **noted)))
    done = svc.cmd("reload")
    assert done.returncode == 0, done.stderr
    assert notes.read_text() == "terminate c shutdown\nterminate b shutdown\n"
    assert list(pids(svc)) == ["a"]


def test_autostart_false_is_declared_not_started(service):
    svc = service()
    rewrite(svc, TREE + table("later", autostart=False))
    done = svc.cmd("reload")
    assert done.returncode == 0, done.stderr
    assert "  added    later: not started" in done.stdout.splitlines()
    node = next(n for n in status(svc)["children"] if n["id"] == "later")
    assert (node["state"], node["pid"]) == ("stopped", None)
    started = svc.cmd("start", "later")
    assert started.returncode == 0, started.stderr


def test_a_stopped_supervisor_gets_its_new_spec_at_its_next_start(service):
    svc = service()
    assert svc.cmd("stop", "jobs").returncode == 0
    rewrite(svc, tree(A, B, C, jobs(X, table("z", nested=True))))
    done = svc.cmd("reload")
    assert done.returncode == 0, done.stderr
    assert ("  updated  jobs: applied: not running (stopped); its next start uses the new "
            "spec") in done.stdout
    assert svc.cmd("start", "jobs").returncode == 0
    assert order(svc, "jobs") == ["x", "z"]


def test_a_changed_error_matrix_reaches_the_children_of_an_unchanged_supervisor(service):
    svc = service()
    before = pids(svc)
    rewrite(svc, TREE + '\n[errors.connection_error]\nrecovery = "abandon"\n')
    done = svc.cmd("reload")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith("6 unchanged; root: errors"), done.stdout
    assert pids(svc) == before
    start = len(svc.lines)
    assert svc.cmd("signal", "jobs/x", "SIGKILL").returncode == 0
    line = svc.lines[svc.wait_line("child.failure jobs/x", start=start)]
    assert "action=abandon" in line, line  # the old matrix restarted a killed worker
    node = next(n for n in status(svc)["children"] if n["id"] == "jobs")
    assert next(n for n in node["children"] if n["id"] == "x")["state"] == "abandoned"


def test_children_started_at_run_time_stay_and_a_new_template_applies_next(service):
    def dyn(prefix: str) -> str:
        return ("[[tree.children]]\nid = \"dyn\"\ntype = \"supervisor\"\n"
                "strategy = \"simple_one_for_one\"\n\n  [tree.children.template]\n"
                f"  id = \"job\"\n  worker = \"{ECHO}\"\n  kwargs = {{ prefix = \"{prefix}\" }}\n")

    svc = service(tree(A, dyn("old ")))
    with supervisor.connect(svc.socket) as app:
        first = app.start_child("dyn")
        before = pids(svc)
        rewrite(svc, tree(A, dyn("new ")))
        report = app.reload()
        assert [(c.action, c.path, c.fields) for c in report.changes] == [
            ("updated", "dyn", ["template"])]
        assert pids(svc) == before  # the running child keeps its process and its spec
        assert app.call(f"dyn/{first}", "echo", "x") == "old x"
        second = app.start_child("dyn")
        assert app.call(f"dyn/{second}", "echo", "x") == "new x"
