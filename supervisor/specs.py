"""Child and supervisor specs: frozen values, validated when they are built.

A spec never holds runtime state; the supervisor process keeps a runtime record beside
each spec (see `tree.slot`). Every invalid value raises `ConfigError` naming the field and
the value, at construction, so a bad tree never reaches a process. The checks of single
values live in `_validate`; this module says which fields each spec has and how they
depend on each other.

    child("counter", Counter, kwargs={"start": 10})       -> ChildSpec
    Supervisor("root", children=[...], strategy=...)      -> SupervisorSpec
    Pool("py", PyWorker, size=4)                          -> PoolSpec (a supervisor of workers)
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from strategies.restart import RestartType, Strategy

from ._validate import SHUTDOWN_WORDS as SHUTDOWN_WORDS  # still importable from here
from ._validate import (
    check_bool,
    check_choice,
    check_env,
    check_errors,
    check_id,
    check_integer,
    check_number,
    check_shutdown,
    check_signal,
    check_significant,
    check_umask,
    reject_unknown,
)
from .errors import ConfigError
from .rayspec import RayOptions, check_backend, ray_options

__all__ = [
    "ChildSpec",
    "ProgramSpec",
    "SupervisorSpec",
    "PoolSpec",
    "child",
    "program",
    "Supervisor",
    "Pool",
    "resolve_worker",
]

AUTO_SHUTDOWN = ("never", "any_significant", "all_significant")
ON_TIMEOUT = ("restart", "ignore")
SERIALIZERS = ("msgpack", "pickle")


def resolve_worker(value: Any, field: str = "worker") -> type:
    """Return the Worker subclass named by `value` (a class or ``"package.module:Class"``).

    Raises ConfigError when the string does not import or the result is not a Worker subclass.
    """
    from .worker import Worker

    obj = value
    if isinstance(value, str):
        module_name, sep, qualname = value.partition(":")
        if not sep or not module_name or not qualname:
            raise ConfigError(
                f"expected an import string 'package.module:Class', got {value!r}",
                field=field,
                value=value,
            )
        try:
            obj = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import {module_name!r}: {exc}", field=field, value=value
            ) from exc
        except AttributeError as exc:
            raise ConfigError(
                f"module {module_name!r} has no attribute {qualname!r}", field=field, value=value
            ) from exc
        except Exception as exc:  # the module itself raised while importing (or a bad name)
            raise ConfigError(
                f"importing {value!r} failed: {type(exc).__name__}: {exc}",
                field=field, value=value,
            ) from exc
    if not (isinstance(obj, type) and issubclass(obj, Worker)):
        raise ConfigError(
            f"expected a Worker subclass or an import string, got {value!r}",
            field=field,
            value=value,
        )
    return obj


@attrs.frozen(kw_only=True)
class ChildSpec:
    """A worker child. Build it with `child(...)`; see that function for the fields."""

    id: str
    worker: type | str
    args: tuple = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    restart: str = "permanent"
    shutdown: float | str = 5.0
    significant: bool = False
    errors: Mapping[str, Any] | None = None
    heartbeat: float | None = None
    heartbeat_timeout: float | None = None
    max_memory_mb: float | None = None
    max_calls: int | None = None
    call_timeout: float | None = 60.0
    on_timeout: str = "restart"
    fallback: str | None = None
    serializer: str = "msgpack"
    stable_after: float = 5.0
    circuit_timeout: float = 60.0
    env: Mapping[str, str] | None = None
    autostart: bool = True
    backend: str = "local"
    ray_options: RayOptions | None = attrs.field(default=None, converter=ray_options)
    # The resolved Worker class; derived from `worker`, never given by the user.
    worker_class: type = attrs.field(init=False, eq=False, repr=False)

    kind = "worker"

    def __attrs_post_init__(self) -> None:
        check_id("id", self.id)
        object.__setattr__(self, "worker_class", resolve_worker(self.worker))
        if not isinstance(self.args, tuple):
            object.__setattr__(self, "args", tuple(self.args))
        if not isinstance(self.kwargs, Mapping):
            raise ConfigError(f"expected a mapping, got {self.kwargs!r}", field="kwargs")
        check_choice("restart", self.restart, tuple(RestartType))
        check_shutdown("shutdown", self.shutdown)
        check_significant(self.significant, self.restart)
        check_number("heartbeat", self.heartbeat, minimum=0, strict=True, allow_none=True)
        check_number("heartbeat_timeout", self.heartbeat_timeout, minimum=0, strict=True,
                     allow_none=True)
        check_number("max_memory_mb", self.max_memory_mb, minimum=0, strict=True, allow_none=True)
        check_integer("max_calls", self.max_calls, minimum=1, allow_none=True)
        check_number("call_timeout", self.call_timeout, minimum=0, strict=True, allow_none=True)
        check_choice("on_timeout", self.on_timeout, ON_TIMEOUT)
        if self.fallback is not None:
            check_id("fallback", self.fallback)
        check_choice("serializer", self.serializer, SERIALIZERS)
        check_env(self.env)
        check_bool("autostart", self.autostart)
        check_number("stable_after", self.stable_after, minimum=0)
        check_number("circuit_timeout", self.circuit_timeout, minimum=0)
        check_errors(self.errors)
        check_backend(self)


@attrs.frozen(kw_only=True)
class ProgramSpec:
    """An external program child. Build it with `program(...)`.

    It runs in its own process group; stopping it sends `stop_signal` to the group, then
    SIGKILL when the `shutdown` grace runs out. Exit code 0 is exit reason ``normal``; any
    other exit is abnormal. It is up once it has run `start_seconds` after exec
    (supervisord's startsecs): an exit before that is a start failure, whatever its code.
    """

    id: str
    command: tuple[str, ...]
    cwd: str | None = None
    env: Mapping[str, str] | None = None
    stop_signal: str | int = "SIGTERM"
    restart: str = "permanent"
    shutdown: float | str = 5.0
    significant: bool = False
    errors: Mapping[str, Any] | None = None
    stable_after: float = 5.0
    circuit_timeout: float = 60.0
    start_seconds: float = 1.0
    autostart: bool = True
    user: str | int | None = None
    group: str | int | None = None
    umask: int | str | None = None

    kind = "worker"

    def __attrs_post_init__(self) -> None:
        check_id("id", self.id)
        command = self.command
        if isinstance(command, str) or not isinstance(command, Sequence) or not command or \
                not all(isinstance(part, str) for part in command):
            raise ConfigError(f"expected a non-empty list of strings, got {command!r}",
                              field="command", value=command)
        object.__setattr__(self, "command", tuple(command))
        if self.cwd is not None and not isinstance(self.cwd, str):
            raise ConfigError(f"expected a path string, got {self.cwd!r}", field="cwd")
        check_env(self.env)
        check_bool("autostart", self.autostart)
        for field in ("user", "group"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)
                                      or value == ""):
                raise ConfigError(f"expected a name or a number, got {value!r}", field=field,
                                  value=value)
        if self.umask is not None:
            object.__setattr__(self, "umask", check_umask("umask", self.umask))
        check_signal("stop_signal", self.stop_signal)
        check_choice("restart", self.restart, tuple(RestartType))
        check_shutdown("shutdown", self.shutdown)
        check_significant(self.significant, self.restart)
        check_errors(self.errors)
        check_number("stable_after", self.stable_after, minimum=0)
        check_number("circuit_timeout", self.circuit_timeout, minimum=0)
        check_number("start_seconds", self.start_seconds, minimum=0)

    @property
    def signal_number(self) -> int:
        return check_signal("stop_signal", self.stop_signal)


@attrs.frozen(kw_only=True)
class SupervisorSpec:
    """A supervisor child (or the root). Build it with `Supervisor(...)`."""

    id: str
    children: tuple = ()
    strategy: str = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0
    restart: str = "permanent"
    shutdown: float | str = "infinity"
    template: ChildSpec | None = None
    max_children: int | None = None
    auto_shutdown: str = "never"
    significant: bool = False
    errors: Mapping[str, Any] | None = None
    # The Ray cluster its backend="ray" descendants join (RAY_ADDRESS for its subtree);
    # None: the RAY_ADDRESS the supervisor inherited.
    ray_address: str | None = None

    kind = "supervisor"

    def __attrs_post_init__(self) -> None:
        check_id("id", self.id)
        if not isinstance(self.children, tuple):
            object.__setattr__(self, "children", tuple(self.children))
        check_choice("strategy", self.strategy, tuple(Strategy))
        check_integer("max_restarts", self.max_restarts, minimum=0)
        check_number("max_seconds", self.max_seconds, minimum=0, strict=True)
        check_choice("restart", self.restart, tuple(RestartType))
        check_shutdown("shutdown", self.shutdown)
        check_integer("max_children", self.max_children, minimum=1, allow_none=True)
        check_choice("auto_shutdown", self.auto_shutdown, AUTO_SHUTDOWN)
        check_significant(self.significant, self.restart)
        check_errors(self.errors)
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or
                                             not self.ray_address):
            raise ConfigError(f"expected a Ray address such as 'host:6379', got "
                              f"{self.ray_address!r}", field="ray_address",
                              value=self.ray_address)
        self._check_children()

    def _check_children(self) -> None:
        seen: set[str] = set()
        for index, spec in enumerate(self.children):
            if not isinstance(spec, ChildSpec | ProgramSpec | SupervisorSpec):
                raise ConfigError(
                    f"expected a child(...), Supervisor(...) or Pool(...), got {spec!r}",
                    field=f"children[{index}]",
                )
            if spec.id in seen:
                raise ConfigError(
                    f"duplicate child id {spec.id!r}", field=f"children[{index}].id", value=spec.id
                )
            seen.add(spec.id)
            if spec.significant and self.auto_shutdown == "never":
                raise ConfigError(
                    "a significant child needs auto_shutdown='any_significant' or "
                    "'all_significant' on its supervisor",
                    field=f"children[{index}].significant",
                    value=True,
                )
        if self.strategy == "simple_one_for_one":
            if self.template is None:
                raise ConfigError(
                    "strategy 'simple_one_for_one' needs a template child spec", field="template"
                )
            if self.children:
                raise ConfigError(
                    "a simple_one_for_one supervisor starts with no children; use template",
                    field="children",
                )
        elif self.template is not None:
            raise ConfigError(
                f"template is only for simple_one_for_one, got strategy={self.strategy!r}",
                field="template",
            )
        if self.template is not None and not isinstance(self.template, ChildSpec):
            raise ConfigError(f"expected a child(...) spec, got {self.template!r}",
                              field="template")
        self._check_dynamic()

    def _check_dynamic(self) -> None:
        # OTP's rules for children made at run time (its significant_simple case): a
        # simple_one_for_one supervisor cannot shut itself down automatically, so neither
        # its auto_shutdown nor its template may ask for it.
        if self.strategy == "simple_one_for_one" and self.auto_shutdown != "never":
            raise ConfigError(
                "a simple_one_for_one supervisor cannot shut down automatically; "
                f"expected 'never', got {self.auto_shutdown!r}",
                field="auto_shutdown", value=self.auto_shutdown,
            )
        if self.template is not None and self.template.significant and \
                self.auto_shutdown == "never":
            raise ConfigError(
                "a significant template needs auto_shutdown='any_significant' or "
                "'all_significant' on its supervisor, which simple_one_for_one does not allow",
                field="template.significant", value=True,
            )

    def find(self, child_id: str) -> ChildSpec | SupervisorSpec | None:
        """The direct child spec with this id, or None."""
        for spec in self.children:
            if spec.id == child_id:
                return spec
        return None


@attrs.frozen(kw_only=True)
class PoolSpec(SupervisorSpec):
    """A one_for_one supervisor of `size` identical workers ``id-0 .. id-{size-1}``.

    Built with `Pool(...)`; the caller reaches it through `app.pool(path)`.
    """

    size: int = 4
    max_overflow: int = 0
    checkout_timeout: float = 5.0
    # The spec every worker of the pool is made from (id = the pool's id); overflow
    # workers started under load are ``id-{size}``, ``id-{size+1}``, ...
    worker_template: ChildSpec | None = None

    def __attrs_post_init__(self) -> None:
        check_integer("size", self.size, minimum=1)
        check_integer("max_overflow", self.max_overflow, minimum=0)
        check_number("checkout_timeout", self.checkout_timeout, minimum=0, strict=True)
        super().__attrs_post_init__()


_CHILD_KEYS = tuple(a.name for a in attrs.fields(ChildSpec) if a.init)
_PROGRAM_KEYS = tuple(a.name for a in attrs.fields(ProgramSpec) if a.init)
_SUPERVISOR_KEYS = tuple(a.name for a in attrs.fields(SupervisorSpec) if a.init)


def child(id: str, worker: type | str, *, args: Sequence[Any] = (),
          kwargs: Mapping[str, Any] | None = None, restart: str = "permanent",
          shutdown: float | str = 5.0, significant: bool = False,
          errors: Mapping[str, Any] | None = None, heartbeat: float | None = None,
          heartbeat_timeout: float | None = None, max_memory_mb: float | None = None,
          max_calls: int | None = None, call_timeout: float | None = 60.0,
          on_timeout: str = "restart", fallback: str | None = None,
          serializer: str = "msgpack", stable_after: float = 5.0,
          circuit_timeout: float = 60.0, env: Mapping[str, str] | None = None,
          autostart: bool = True, backend: str = "local",
          ray_options: RayOptions | Mapping[str, Any] | None = None,
          **unknown: Any) -> ChildSpec:
    """A worker child spec.

    `worker` is a Worker subclass or ``"package.module:Class"``; `args`/`kwargs` go to its
    `init`. `restart`: permanent | transient | temporary. `shutdown`: seconds of grace,
    ``"brutal_kill"`` or ``"infinity"``. `env` is added to the environment the worker
    inherits from its supervisor. `autostart=False`: declared, but started only by
    `restart_child` (``python -m supervisor start PATH``). `backend="ray"` runs the worker
    as a Ray actor placed by `ray_options` (see `RayOptions`), still supervised here.
    Raises ConfigError for any invalid or unknown field.
    """
    reject_unknown(unknown, _CHILD_KEYS)
    return ChildSpec(
        id=id, worker=worker, args=tuple(args), kwargs=dict(kwargs or {}), restart=restart,
        shutdown=shutdown, significant=significant, errors=errors, heartbeat=heartbeat,
        heartbeat_timeout=heartbeat_timeout, max_memory_mb=max_memory_mb, max_calls=max_calls,
        call_timeout=call_timeout, on_timeout=on_timeout, fallback=fallback,
        serializer=serializer, stable_after=stable_after, circuit_timeout=circuit_timeout,
        env=dict(env) if env is not None else None, autostart=autostart,
        backend=backend, ray_options=ray_options,
    )


def program(id: str, command: Sequence[str], *, cwd: str | None = None,
            env: Mapping[str, str] | None = None, stop_signal: str | int = "SIGTERM",
            restart: str = "permanent", shutdown: float | str = 5.0,
            significant: bool = False, errors: Mapping[str, Any] | None = None,
            stable_after: float = 5.0, circuit_timeout: float = 60.0,
            start_seconds: float = 1.0, autostart: bool = True,
            user: str | int | None = None, group: str | int | None = None,
            umask: int | str | None = None, **unknown: Any) -> ProgramSpec:
    """An external program supervised like any child: ``program("db", ["redis-server"])``.

    `env` is added to the supervisor's environment; `stop_signal` goes to the program's
    process group on a graceful stop; the program is up once it has run `start_seconds`
    (an earlier exit is a start failure; 0: up at exec). `user` / `group` (names or
    numbers) and `umask` (``0o022`` or ``"022"``) are set in the program before exec
    (changing user needs a supervisor running as root; a failure is a start failure).
    Raises ConfigError for any invalid or unknown field.
    """
    reject_unknown(unknown, _PROGRAM_KEYS)
    return ProgramSpec(
        id=id, command=command, cwd=cwd, env=dict(env) if env is not None else None,
        stop_signal=stop_signal, restart=restart, shutdown=shutdown, significant=significant,
        errors=errors, stable_after=stable_after, circuit_timeout=circuit_timeout,
        start_seconds=start_seconds, autostart=autostart, user=user, group=group,
        umask=umask,
    )


def Supervisor(id: str, children: Sequence[Any] = (), *, strategy: str = "one_for_one",
               max_restarts: int = 3, max_seconds: float = 5.0, restart: str = "permanent",
               shutdown: float | str = "infinity", template: ChildSpec | None = None,
               max_children: int | None = None, auto_shutdown: str = "never",
               significant: bool = False, errors: Mapping[str, Any] | None = None,
               ray_address: str | None = None, **unknown: Any) -> SupervisorSpec:
    """A supervisor spec (the root of a tree, or a nested supervisor process).

    Raises ConfigError for duplicate child ids, an unknown strategy, a missing template for
    simple_one_for_one, ``max_restarts < 0``, ``max_seconds <= 0``, a significant child under
    ``auto_shutdown="never"``, or any unknown key.
    """
    reject_unknown(unknown, _SUPERVISOR_KEYS)
    return SupervisorSpec(
        id=id, children=tuple(children), strategy=strategy, max_restarts=max_restarts,
        max_seconds=max_seconds, restart=restart, shutdown=shutdown, template=template,
        max_children=max_children, auto_shutdown=auto_shutdown, significant=significant,
        errors=errors, ray_address=ray_address,
    )


def Pool(id: str, worker: type | str, size: int = 4, *, max_overflow: int = 0,
         checkout_timeout: float = 5.0, max_restarts: int = 3, max_seconds: float = 5.0,
         **child_options: Any) -> PoolSpec:
    """A pool: a one_for_one supervisor of `size` identical workers ``id-0 .. id-{size-1}``.

    `max_restarts`/`max_seconds` are the pool supervisor's own restart intensity (more
    worker restarts than that in the window and the pool gives up, as any supervisor);
    `child_options` are `child(...)` options applied to every worker. Raises ConfigError.
    """
    check_integer("size", size, minimum=1)
    if "autostart" in child_options:
        raise ConfigError("a pool's workers are always started (a pool without them would "
                          "only queue calls)", field="autostart",
                          value=child_options["autostart"])
    template = child(id, worker, **child_options)
    children = tuple(attrs.evolve(template, id=f"{id}-{i}") for i in range(size))
    return PoolSpec(
        id=id, children=children, size=size, max_overflow=max_overflow,
        checkout_timeout=checkout_timeout, worker_template=template,
        max_restarts=max_restarts, max_seconds=max_seconds,
    )
