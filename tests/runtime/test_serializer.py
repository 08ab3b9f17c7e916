"""serializer="pickle": a child that opts in sends its results pickled (objects msgpack
cannot carry come back as themselves), through app.call, a pool's call, submit and chunked
map; a result even pickle cannot carry is an EncodeError for that call only and the worker
keeps serving. Without the opt-in the same result is an EncodeError naming the method."""

from __future__ import annotations

import pytest

from supervisor import EncodeError, Pool, Supervisor, child

from ._workers import Pickling, Point

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def app(start_tree):
    return start_tree(Supervisor("root", children=[
        child("pickled", Pickling, serializer="pickle"),
        child("plain", Pickling),
        Pool("pool", Pickling, size=2, serializer="pickle"),
    ]))


def test_an_opted_in_child_returns_pickled_objects(app):
    assert app.call("pickled", "point", 1, y=2) == Point(1, 2)
    pid = app.which_children()[0].pid
    with pytest.raises(EncodeError, match="cannot encode the result of 'unpicklable'"):
        app.call("pickled", "unpicklable", -1)
    assert app.call("pickled", "point", 3) == Point(3, 0)  # the same process serves on
    assert app.which_children()[0].pid == pid


def test_without_the_opt_in_such_a_result_is_an_encode_error(app):
    with pytest.raises(EncodeError, match="cannot encode the result of 'point'"):
        app.call("plain", "point", 1)


def test_a_pickling_pool_carries_objects_through_call_submit_and_map(app):
    pool = app.pool("pool")
    assert pool.call("point", 1, 2) == Point(1, 2)
    assert pool.submit("point", 4, y=5).result(10) == Point(4, 5)
    assert list(pool.map("point", range(10), range(10), chunksize=4)) == [
        Point(i, i) for i in range(10)]
    results = pool.map("unpicklable", [1, 2, -3, 4], chunksize=4)
    assert [next(results), next(results)] == [Point(1, 1), Point(2, 2)]
    with pytest.raises(EncodeError, match="cannot encode the result of 'unpicklable'"):
        next(results)
    assert list(pool.map("point", [7], chunksize=2)) == [Point(7, 0)]
