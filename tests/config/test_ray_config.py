"""backend / ray_options / ray_address in Python specs and in TOML (no Ray needed)."""

from __future__ import annotations

import pytest

from supervisor import ConfigError, Pool, Supervisor, child
from supervisor.config import loads
from supervisor.rayspec import RayOptions
from workers.echo import Echo

TREE = """
[tree]
id = "root"
ray_address = "head.example:6379"

[[tree.children]]
id = "model"
worker = "workers.echo:Echo"
backend = "ray"
ray_options = {{ {options} }}
"""


def test_toml_gives_the_spec_the_factory_gives():
    spec = loads(TREE.format(options='num_cpus = 1, resources = { accel = 2 }, '
                                     'scheduling_strategy = "SPREAD"'))
    assert spec.ray_address == "head.example:6379"
    assert spec.children[0] == child("model", "workers.echo:Echo", backend="ray", ray_options=RayOptions(
        num_cpus=1, resources={"accel": 2}, scheduling_strategy="SPREAD"))


@pytest.mark.parametrize("options, message", [
    ('num_cpus = -1', r"^<string>: tree\.children\[0\]\.ray_options\.num_cpus: expected a "
                      r"number >= 0, got -1$"),
    ('colour = "red"', r"ray_options\.colour: unknown key 'colour'; expected one of num_cpus"),
    ('scheduling_strategy = "PACK"', r"ray_options\.scheduling_strategy: expected one of "
                                     r"DEFAULT, SPREAD, got 'PACK'"),
    ('node_id = "ab", scheduling_strategy = "SPREAD"', r"ray_options\.node_id: node_id pins"),
    ('start_timeout = 0', r"ray_options\.start_timeout: expected a number > 0, got 0"),
    ('resources = { accel = "x" }', r"ray_options\.resources\.accel: expected a number"),
])
def test_bad_ray_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        loads(TREE.format(options=options))


def test_unknown_backend_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"^backend: expected one of local, ray, got 'dask'$"):
        child("w", Echo, backend="dask")
    text = TREE.format(options="num_cpus = 1").replace('"ray"', '"dask"')
    with pytest.raises(ConfigError, match=r"^<string>: tree\.children\[0\]\.backend: expected "
                                          r"one of local, ray, got 'dask'$"):
        loads(text)


def test_options_the_bridge_cannot_honour_are_refused():
    with pytest.raises(ConfigError, match=r"^ray_options: ray_options is only for "
                                          r"backend='ray'"):
        child("w", Echo, ray_options={"num_cpus": 1})
    with pytest.raises(ConfigError, match=r"^max_memory_mb: .* not supported with "
                                          r"backend='ray'; use ray_options\.memory"):
        child("w", Echo, backend="ray", max_memory_mb=100)
    with pytest.raises(ConfigError, match=r"^max_calls: "):
        child("w", Echo, backend="ray", max_calls=10)
    with pytest.raises(ConfigError, match=r"^ray_address: expected a Ray address"):
        Supervisor("root", ray_address="")


def test_a_pool_passes_the_backend_to_every_worker():
    pool = Pool("p", Echo, size=3, backend="ray", ray_options={"num_cpus": 0.5})
    assert [(c.id, c.backend, c.ray_options.num_cpus) for c in pool.children] == [
        ("p-0", "ray", 0.5), ("p-1", "ray", 0.5), ("p-2", "ray", 0.5)]
