"""Frames: FrameReader under splits, garbage and limits; the socket helpers on real sockets."""

import os
import re
import socket
import struct
import threading

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.errors import ProtocolError
from supervisor.wire import messages as p
from supervisor.wire.framing import MAX_FRAME, Codec, FrameReader, recv_some, send_frame

CALL = p.CALL_CODEC
CONTROL = p.CONTROL_CODEC
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ message strategies

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
text = st.text(max_size=20)
# What a decoded Any looks like: tuples come back as lists, so only lists are generated;
# NaN is left out because NaN != NaN would fail the equality check, not the codec.
values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | text | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=10,
)
kwargs = st.none() | st.dictionaries(text, values, max_size=3)
args = st.lists(values, max_size=4).map(tuple)

call_messages = st.one_of(
    st.builds(p.Call, ints, text, args, kwargs, st.none() | text, st.booleans()),
    st.builds(p.Cast, text, args, kwargs, st.none() | text, st.booleans()),
    st.builds(p.Reply, ints, values, st.booleans()),
    st.builds(p.Fail, ints, text, text, text, text),
)
control_messages = st.one_of(
    st.builds(p.Ready, ints),
    st.builds(p.Stop, text),
    st.builds(p.Exit, text, st.none() | text, st.none() | text, st.none() | text),
    st.builds(p.Ping, ints),
    st.builds(p.OpenChannel, ints, text),
    st.builds(
        p.StartChild,
        ints,
        text,
        st.none() | st.binary(max_size=30),
        st.lists(values, max_size=3),
        kwargs,
    ),
    st.builds(p.TerminateChild, ints, text, text),
    st.builds(p.Response, ints, values),
    st.builds(p.ErrorResponse, ints, text, text, st.dictionaries(text, values, max_size=3)),
    st.builds(p.Event, st.lists(text, min_size=1, max_size=3)),
)
# (codec, messages) pairs, so one property covers both unions.
streams = st.one_of(
    st.tuples(st.just(CALL), st.lists(call_messages, max_size=12)),
    st.tuples(st.just(CONTROL), st.lists(control_messages, max_size=12)),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _feed_all(reader: FrameReader, chunks) -> list:
    out = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    return out


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# --------------------------------------------------------------------- splits and order


@FUZZ
@given(streams, st.lists(st.integers(min_value=0), max_size=40))
def test_stream_split_anywhere_yields_the_same_messages_in_order(stream, cuts):
    codec, msgs = stream
    data = b"".join(codec.encode(m) for m in msgs)
    reader = FrameReader(codec)
    assert msgs == _feed_all(reader, _split(data, cuts))
    assert reader.pending == 0
    assert reader.eof() is None


@FUZZ
@given(streams)
def test_encode_many_equals_concatenated_encode(stream):
    codec, msgs = stream
    assert b"".join(codec.encode(m) for m in msgs) == codec.encode_many(msgs)


def test_byte_by_byte_and_all_at_once():
    msgs = [p.Call(i, "incr", (i,)) for i in range(50)]
    data = CALL.encode_many(msgs)
    assert msgs == _feed_all(FrameReader(CALL), [data[i : i + 1] for i in range(len(data))])
    assert msgs == FrameReader(CALL).feed(data)


def test_pending_counts_the_incomplete_frame():
    frame = CALL.encode(p.Reply(1, "x" * 100))
    reader = FrameReader(CALL)
    assert [] == reader.feed(frame[:3])
    assert 3 == reader.pending
    assert [] == reader.feed(frame[3:50])
    assert 50 == reader.pending
    assert [p.Reply(1, "x" * 100)] == reader.feed(frame[50:] + frame[:10])
    assert 10 == reader.pending


def test_large_frame_in_small_chunks():
    msg = p.Reply(1, b"\xab" * (3 * 1024 * 1024))
    data = CALL.encode(msg) + CALL.encode(p.Reply(2))
    reader = FrameReader(CALL)
    out = _feed_all(reader, (data[i : i + 65536] for i in range(0, len(data), 65536)))
    assert [msg, p.Reply(2)] == out


def test_feed_does_not_keep_the_callers_buffer():
    # recv_some feeds views of one reused buffer: what the reader keeps must be a copy.
    frames = CALL.encode(p.Reply(1, "first")) + CALL.encode(p.Reply(2, "second"))
    scratch = bytearray(frames)
    reader = FrameReader(CALL)
    cut = len(frames) - 5
    assert [p.Reply(1, "first")] == reader.feed(memoryview(scratch)[:cut])
    scratch[:] = b"\xff" * len(scratch)  # the caller reuses its buffer
    assert [p.Reply(2, "second")] == reader.feed(frames[cut:])


# ------------------------------------------------------------------------------- garbage


def _only_protocol_errors(codec: Codec, chunks) -> None:
    reader = FrameReader(codec)
    try:
        for chunk in chunks:
            for msg in reader.feed(chunk):
                assert isinstance(msg, codec.type.__args__)
        reader.eof()
    except ProtocolError:
        with pytest.raises(ProtocolError, match=r"^channel already failed: "):
            reader.feed(b"\x00")


@FUZZ
@given(
    st.sampled_from([CALL, CONTROL]), st.binary(max_size=300), st.lists(st.integers(0), max_size=5)
)
def test_random_bytes_raise_only_protocol_error(codec, data, cuts):
    _only_protocol_errors(codec, _split(data, cuts))


@FUZZ
@given(st.sampled_from([CALL, CONTROL]), st.binary(max_size=200))
def test_random_bodies_behind_a_valid_header_raise_only_protocol_error(codec, body):
    _only_protocol_errors(codec, [_frame(body)])


@FUZZ
@given(streams, st.data())
def test_mutated_valid_frames_raise_only_protocol_error(stream, data):
    codec, msgs = stream
    frames = bytearray(
        codec.encode_many(msgs) or codec.encode(p.Reply(0) if codec is CALL else p.Ping(0))
    )
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        i = data.draw(st.integers(0, len(frames) - 1), label="index")
        frames[i] ^= data.draw(st.integers(1, 255), label="xor")
    cut = data.draw(st.integers(0, len(frames)), label="truncate")
    _only_protocol_errors(codec, [bytes(frames[:cut])])


WRONG_BODIES = {
    "map": msgspec.msgpack.encode({"k": "c", "id": 1}),
    "int": msgspec.msgpack.encode(5),
    "nil": msgspec.msgpack.encode(None),
    "str": msgspec.msgpack.encode("c"),
    "empty-array": msgspec.msgpack.encode([]),
    "unknown-tag": msgspec.msgpack.encode(["?", 1]),
    "tag-not-str": msgspec.msgpack.encode([1, 1]),
    "wrong-field-type": msgspec.msgpack.encode(["r", "one"]),
    "missing-field": msgspec.msgpack.encode(["f", 1, "python_error"]),
    "control-tag": CONTROL.encode(p.Ready(1))[4:],
    "trailing-bytes": CALL.encode(p.Reply(1))[4:] + b"\x00",
    "empty-body": b"",
    "garbage": b"\xc1\xc1\xc1",
}


@pytest.mark.parametrize("body", WRONG_BODIES.values(), ids=WRONG_BODIES.keys())
def test_wrong_shapes_are_protocol_errors(body):
    good = p.Reply(7, "before")
    reader = FrameReader(CALL)
    with pytest.raises(ProtocolError, match=r"^call frame of \d+ bytes does not decode: ") as info:
        reader.feed(CALL.encode(good) + _frame(body))
    assert [good] == info.value.context["decoded"]
    assert info.value.category == "communication_error"
    assert 0 == reader.pending


def test_a_call_tag_on_the_control_channel_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=r"^control frame of \d+ bytes does not decode: .*'c'"):
        FrameReader(CONTROL).feed(CALL.encode(p.Call(1, "m")))


# ---------------------------------------------------------------------------- limits


@pytest.mark.parametrize("length", [0xFFFFFFFF, MAX_FRAME + 1])
def test_oversized_length_fails_on_the_header_alone(length):
    reader = FrameReader(CALL)
    with pytest.raises(
        ProtocolError, match=rf"^call frame length {length} exceeds the limit of {MAX_FRAME} bytes"
    ):
        reader.feed(struct.pack(">I", length))
    assert 0 == reader.pending


def test_oversized_length_behind_buffered_bytes():
    codec = Codec(p.CallMessage, max_frame=100, name="call")
    reader = FrameReader(codec)
    assert [] == reader.feed(b"\x00\x00")
    with pytest.raises(
        ProtocolError, match=r"^call frame length 101 exceeds the limit of 100 bytes"
    ):
        reader.feed(b"\x00\x65")
    assert 0 == reader.pending


def test_a_frame_of_exactly_max_frame_is_accepted():
    msg = p.Reply(1, "x" * 50)
    size = len(CALL.encode(msg)) - 4
    codec = Codec(p.CallMessage, max_frame=size, name="call")
    assert [msg] == FrameReader(codec).feed(codec.encode(msg))


# ------------------------------------------------------------------------ eof and poison


def test_clean_eof_returns_none():
    reader = FrameReader(CALL)
    assert reader.eof() is None
    reader.feed(CALL.encode(p.Reply(1)))
    assert reader.eof() is None


def test_eof_mid_body():
    frame = CALL.encode(p.Reply(1, "0123456789"))
    reader = FrameReader(CALL)
    reader.feed(frame[:7])
    with pytest.raises(
        ProtocolError, match=rf"^connection closed mid-frame: got 7 of {len(frame)} bytes$"
    ):
        reader.eof()


def test_eof_mid_header():
    reader = FrameReader(CALL)
    reader.feed(b"\x00\x00")
    with pytest.raises(
        ProtocolError, match=r"^connection closed mid-frame: got 2 of 4 header bytes$"
    ):
        reader.eof()


def test_a_failed_reader_stays_failed():
    reader = FrameReader(CALL)
    with pytest.raises(ProtocolError):
        reader.feed(_frame(b"\xc1"))
    assert reader.failed is not None
    valid = CALL.encode(p.Reply(1))
    with pytest.raises(
        ProtocolError, match=r"^channel already failed: call frame of 1 bytes does not decode"
    ):
        reader.feed(valid)
    with pytest.raises(ProtocolError, match=r"^channel already failed: "):
        reader.eof()


# --------------------------------------------------------------------------- sockets


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_send_frame_with_an_fd_arrives_with_recv_some(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        send_frame(a, CONTROL.encode(p.OpenChannel(1, "jobs/job-1")), fds=[r])
        msgs, fds, eof = recv_some(b, FrameReader(CONTROL), maxfds=1)
        assert ([p.OpenChannel(1, "jobs/job-1")], False) == (msgs, eof)
        assert 1 == len(fds)
        try:
            # The received descriptor is close-on-exec (no leak into forked children) and
            # is a working duplicate of the pipe's read end.
            assert not os.get_inheritable(fds[0])
            os.write(w, b"ping")
            assert b"ping" == os.read(fds[0], 4)
        finally:
            os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_nonblocking_recv_with_nothing_pending(pair):
    _, b = pair
    b.setblocking(False)
    assert ([], [], False) == recv_some(b, FrameReader(CALL))
    assert ([], [], False) == recv_some(b, FrameReader(CALL), maxfds=1)


def test_peer_close_is_eof(pair):
    a, b = pair
    send_frame(a, CALL.encode(p.Reply(1)))
    a.close()
    reader = FrameReader(CALL)
    assert ([p.Reply(1)], [], False) == recv_some(b, reader)
    assert ([], [], True) == recv_some(b, reader)


def test_peer_close_mid_frame_is_a_protocol_error(pair):
    a, b = pair
    a.sendall(CALL.encode(p.Reply(1, "abcdef"))[:6])
    a.close()
    reader = FrameReader(CALL)
    assert ([], [], False) == recv_some(b, reader)
    with pytest.raises(ProtocolError, match=r"^connection closed mid-frame: got 6 of \d+ bytes$"):
        recv_some(b, reader)


def test_garbage_with_an_fd_leaks_no_descriptor(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        before = _open_fds()
        send_frame(a, _frame(b"\xc1"), fds=[r])
        with pytest.raises(ProtocolError):
            recv_some(b, FrameReader(CONTROL), maxfds=1)
        assert before == _open_fds()
    finally:
        os.close(r)
        os.close(w)


def test_more_fds_than_maxfds_is_a_protocol_error(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        before = _open_fds()
        send_frame(a, CONTROL.encode(p.OpenChannel(1, "x")), fds=[r, w])
        with pytest.raises(ProtocolError, match=r"^more than 1 file descriptors arrived"):
            recv_some(b, FrameReader(CONTROL), maxfds=1)
        assert before == _open_fds()
    finally:
        os.close(r)
        os.close(w)


def test_a_large_coalesced_write_over_a_socket(pair):
    a, b = pair
    msgs = [p.Reply(i, os.urandom(1000)) for i in range(2000)]  # ~2 MB, beyond socket buffers
    data = CALL.encode_many(msgs)
    sender = threading.Thread(target=send_frame, args=(a, data), daemon=True)
    sender.start()
    b.settimeout(10)
    reader, got = FrameReader(CALL), []
    while len(got) < len(msgs):
        out, fds, eof = recv_some(b, reader, bufsize=65536)
        assert ([], False) == (fds, eof)
        got.extend(out)
    sender.join(timeout=10)
    assert msgs == got


def test_messages_name_lengths_in_bytes():
    # Anchored shape of the oversize message, for people matching on it in logs.
    reader = FrameReader(CONTROL)
    with pytest.raises(ProtocolError) as info:
        reader.feed(b"\xff\xff\xff\xff")
    assert re.fullmatch(
        r"control frame length 4294967295 exceeds the limit of 67108864 bytes \(.*\)",
        str(info.value),
    )
