"""The message structs of supervisor.wire.messages and their codecs (no sockets here)."""

import re
import socket

import msgspec
import pytest
from faker import Faker

from supervisor.errors import EncodeError, ProtocolError, WorkerError
from supervisor.wire import messages as p
from supervisor.wire.framing import Codec, FrameReader

fake = Faker()
Faker.seed(20240611)


def _word() -> str:
    return fake.pystr(min_chars=1, max_chars=12)


def _int() -> int:
    return fake.pyint(min_value=0, max_value=2**31)


def _path() -> str:
    return "/".join(fake.words(nb=fake.pyint(min_value=1, max_value=3)))


def _payload() -> dict:
    return {
        "name": fake.name(),
        "n": fake.pyint(),
        "ratio": fake.pyfloat(),
        "tags": fake.words(nb=3),
        "blob": fake.binary(length=16),
        "none": None,
    }


CALL_SAMPLES = [
    p.Call(
        _int(), _word(), (fake.pyint(), fake.name(), [1, 2]), {"k": fake.word()}, _word(), False
    ),
    p.Cast(_word(), (fake.pyfloat(),), None, None, True),
    p.Reply(_int(), _payload()),
    p.Fail(_int(), "python_error", "ValueError", fake.sentence(), fake.text()),
    p.NotRun(_int(), fake.sentence()),
    p.Closing(fake.sentence()),
]

CONTROL_SAMPLES = [
    p.Ready(_int()),
    p.StartFailed(_path(), "initialization_error", "RuntimeError", fake.sentence(), fake.text()),
    p.Begin(),
    p.Stop(_word()),
    p.Exit("normal"),
    p.Exit("python_error", "python_error", "KeyError", fake.sentence(), fake.text()),
    p.Ping(_int()),
    p.Pong(_int()),
    p.OpenChannel(_int(), _path()),
    p.GetMetrics(_int(), _path()),
    p.RecentEvents(_int(), _int()),
    p.WhichChildren(_int(), ""),
    p.CountChildren(_int(), _path()),
    p.GetStatus(_int(), _path()),
    p.StartChild(_int(), _path(), fake.binary(length=32), [fake.pyint(), fake.word()], {"x": 1}),
    p.TerminateChild(_int(), _path(), _word()),
    p.RestartChild(_int(), _path(), _word()),
    p.ReplaceChild(_int(), _path(), _word()),
    p.RefreshCode(_int(), _path()),
    p.DeleteChild(_int(), _path(), _word()),
    p.Shutdown(_int()),
    p.Reload(_int(), True),
    p.ApplySpec(_int(), fake.binary(length=32), [_path()]),
    p.ReportFailure(_int(), _path(), _word(), "timeout_error", "timeout"),
    p.SignalChild(_int(), _path(), _word(), 15),
    p.Response(_int(), [_payload(), fake.pyint()]),
    p.ErrorResponse(_int(), "NoSuchChild", fake.sentence(), {"path": _path()}),
    p.Event(["supervisor", "child", "restarted"], {"duration": fake.pyfloat()}, _payload()),
    p.Logs(_int(), _path(), 50, _int(), True, _word()),
]


def _ids(samples):
    return [type(m).__name__ for m in samples]


def _round_trip(codec: Codec, msg):
    reader = FrameReader(codec)
    out = reader.feed(codec.encode(msg))
    assert reader.pending == 0
    assert reader.eof() is None
    return out


@pytest.mark.parametrize("msg", CALL_SAMPLES, ids=_ids(CALL_SAMPLES))
def test_call_messages_round_trip(msg):
    assert [msg] == _round_trip(p.CALL_CODEC, msg)


@pytest.mark.parametrize("msg", CONTROL_SAMPLES, ids=_ids(CONTROL_SAMPLES))
def test_control_messages_round_trip(msg):
    assert [msg] == _round_trip(p.CONTROL_CODEC, msg)


def test_every_union_member_has_a_sample():
    assert set(p.CallMessage.__args__) == {type(m) for m in CALL_SAMPLES}
    assert set(p.ControlMessage.__args__) == {type(m) for m in CONTROL_SAMPLES}


def test_tags_are_short_and_unique():
    tags = [cls.__struct_config__.tag for cls in p.CallMessage.__args__ + p.ControlMessage.__args__]
    assert all(isinstance(t, str) and len(t) == 1 for t in tags)
    assert len(tags) == len(set(tags))


def test_messages_are_frozen():
    msg = p.Ping(1)
    with pytest.raises(AttributeError):
        msg.seq = 2  # type: ignore[misc]


def test_defaults():
    assert p.Call(1, "m") == p.Call(1, "m", (), None, None, False)
    assert p.Stop().reason == "shutdown"
    assert p.Exit("normal").category is None
    a, b = p.ErrorResponse(1, "X", "m"), p.ErrorResponse(2, "X", "m")
    assert a.fields == {} and a.fields is not b.fields
    assert (
        p.StartChild(1, "").args == [] and p.StartChild(1, "").args is not p.StartChild(1, "").args
    )
    assert p.Event(["supervisor"]).measurements == {}


def test_an_older_peers_shorter_array_decodes_with_defaults():
    # Fields are append-only with defaults: an array without the trailing fields is valid.
    body = msgspec.msgpack.encode(["c", 7, "incr"])
    assert p.Call(7, "incr") == p.CALL_CODEC.decode(body)
    body = msgspec.msgpack.encode(["X", "normal"])
    assert p.Exit("normal") == p.CONTROL_CODEC.decode(body)


def test_messages_dispatch_with_match():
    def handle(msg):
        match msg:
            case p.Reply(id=i, value=v):
                return ("reply", i, v)
            case p.Fail(i, category, type_, message):
                return ("fail", i, category, type_, message)
        return None

    assert handle(p.Reply(3, "x")) == ("reply", 3, "x")
    assert handle(p.Fail(4, "python_error", "E", "boom")) == (
        "fail",
        4,
        "python_error",
        "E",
        "boom",
    )


def test_child_info_round_trips_as_a_map_inside_a_response():
    infos = [
        p.ChildInfo(
            _word(),
            fake.pyint(min_value=2, max_value=2**22),
            "worker",
            "running",
            2,
            _path(),
            fake.pyfloat(positive=True),
        ),
        p.ChildInfo(_word(), None, "supervisor", "circuit_open"),
    ]
    [decoded] = _round_trip(p.CONTROL_CODEC, p.Response(9, infos))
    assert isinstance(decoded.value[0], dict)
    assert decoded.value[1] == {
        "id": infos[1].id,
        "pid": None,
        "kind": "supervisor",
        "state": "circuit_open",
        "restarts": 0,
        "path": "",
        "started_at": None,
        "circuit": "closed",
        "retry_at": None,
        "reason": None,
        "node_ip": None,
        "node_id": None,
    }
    assert infos == msgspec.convert(decoded.value, list[p.ChildInfo])


def test_codec_decode_rejects_with_protocol_error():
    with pytest.raises(ProtocolError, match=r"^call frame of 1 bytes does not decode: "):
        p.CALL_CODEC.decode(b"\x05")
    with pytest.raises(ProtocolError, match=r"Invalid value 'R'"):
        p.CALL_CODEC.decode(msgspec.msgpack.encode(["R", 1]))


def test_tiny_call_makes_a_small_frame():
    # Not a timing test: the hot path's frame for a tiny call must stay small.
    frame = p.CALL_CODEC.encode(p.Call(1, "incr", (1,)))
    assert len(frame) < 32


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(object(), "object"), ({Opaque(), Opaque()}, "Opaque"), (2**70, "int")],
    ids=["object", "set-of-custom", "big-int"],
)
def test_unencodable_values_raise_encode_error_naming_the_type(value, type_name):
    with pytest.raises(EncodeError, match=rf"\b{type_name}\b") as info:
        p.CALL_CODEC.encode(p.Call(1, "m", (value,)))
    assert isinstance(info.value, TypeError) and isinstance(info.value, WorkerError)
    assert info.value.category == "communication_error"


def test_a_socket_is_not_encodable():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        with pytest.raises(EncodeError, match=r"\bsocket\b"):
            p.CALL_CODEC.encode(p.Reply(1, {"conn": sock}))


def test_too_deep_nesting_is_an_encode_error():
    value: list = []
    for _ in range(10_000):
        value = [value]
    with pytest.raises(EncodeError, match=r"Reply"):
        p.CALL_CODEC.encode(p.Reply(1, value))


def test_frame_over_max_frame_is_an_encode_error():
    codec = Codec(p.CallMessage, max_frame=64, name="call")
    with pytest.raises(
        EncodeError, match=r"^Reply message of \d+ bytes exceeds the call frame limit of 64 bytes$"
    ):
        codec.encode(p.Reply(1, b"x" * 100))
    with pytest.raises(EncodeError):
        codec.encode_many([p.Reply(1), p.Reply(2, b"x" * 100)])


def test_codec_rejects_a_bad_max_frame():
    with pytest.raises(ValueError, match="max_frame"):
        Codec(p.CallMessage, max_frame=0)
    with pytest.raises(ValueError, match="max_frame"):
        Codec(p.CallMessage, max_frame=2**32)


def test_codec_repr_names_it():
    assert re.fullmatch(r"Codec\(control, max_frame=67108864\)", repr(p.CONTROL_CODEC))
