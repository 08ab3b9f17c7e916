"""Fuzzed frames into a worker's call channel and into a service's control socket.

Frames are random and mutated (random bytes, truncated, oversized length prefixes, wrong
tags, valid MessagePack of the wrong shape, flipped bits, large bodies), from a seeded RNG
(printed; SUPERVISOR_FUZZ_SEED=<n> replays it) and a bounded count. An oracle, our own
`FrameReader` over the exact bytes sent, says what each case must do:

    the bytes hold a frame that does not decode   -> "bad"
    they end inside a frame                        -> "cut"  (then we hang up)
    they are whole, valid frames                   -> "valid"

Worker: "bad" is a communication_error (exit reason protocol_error), the worker is
restarted and the App keeps working; "cut" followed by a hang-up only drops that channel
(the caller left mid-frame; the worker keeps serving its other callers); "valid" frames
are served. Supervisor control socket: "bad" drops that client at once, and the
supervisor survives (same pid, still answering) with bounded memory and no leaked fds.
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import time
from typing import Any

import msgspec
import psutil
import pytest

import supervisor
from supervisor import ProtocolError, Supervisor, child
from supervisor.wire import messages as P
from supervisor.wire.framing import MAX_FRAME, FrameReader

from ._workers import Target

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORKER_CASES = 40
CONTROL_CASES = 200
SENTINEL = 2**62  # the id of the ping that proves a worker served what came before it
CALL_TAGS = "ckrf"
CONTROL_TAGS = "RSsXpPowngatedzFyYE"
# Control messages a fuzzed frame must never turn into: they would stop or change the tree
# (any same-uid client may legitimately send them).
HARMFUL = (P.Stop, P.Shutdown, P.StartChild, P.TerminateChild, P.RestartChild, P.DeleteChild,
           P.ReportFailure, P.OpenChannel)
ENC = msgspec.msgpack.Encoder()


def seeded(name: str) -> random.Random:
    seed = int(os.environ.get("SUPERVISOR_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
    print(f"\n{name}: fuzz seed {seed} (replay: SUPERVISOR_FUZZ_SEED={seed})")
    return random.Random(seed)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# ------------------------------------------------------------------ generators
def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "str", "bytes", "float", "none", "bool"]
    if depth < 3:
        kinds += ["list", "map"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if kind == "str":
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(8)))
    if kind == "bytes":
        return rng.randbytes(rng.randrange(8))
    if kind == "float":
        return rng.choice([0.5, float("nan"), float("inf"), -1e308])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(random_value(rng, 3)): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def call_message(rng: random.Random) -> Any:
    method, args = rng.choice([("ping", ()), ("echo", (random_value(rng),)),
                               ("add", (rng.randrange(100), rng.randrange(100)))])
    if rng.random() < 0.2:
        return P.Cast(method=method, args=args)
    return P.Call(id=rng.randrange(1, 2**31), method=method, args=args)


def control_message(rng: random.Random) -> Any:
    rid = rng.randrange(1, 2**31)
    return rng.choice([P.WhichChildren(id=rid, path=""), P.CountChildren(id=rid, path=""),
                       P.GetStatus(id=rid, path=""), P.Ping(seq=rid),
                       P.WhichChildren(id=rid, path="no/such")])


def mutated(rng: random.Random, valid: Any, tags: str) -> tuple[str, bytes]:
    """One fuzz case: (kind, bytes). `valid` makes a valid message of the channel."""
    good = frame(ENC.encode(valid(rng)))
    kind = rng.choice(["random", "truncated", "oversized", "wrong_tag", "wrong_shape",
                       "bitflip", "valid_then_garbage", "big", "valid"])
    if kind == "valid":  # random values in well-formed frames: they must be served
        return kind, good + b"".join(frame(ENC.encode(valid(rng)))
                                     for _ in range(rng.randrange(3)))
    if kind == "random":
        return kind, frame(rng.randbytes(rng.randrange(1, 64)))
    if kind == "truncated":  # cut short; what follows is read as part of it (misaligned)
        cut = good[:rng.randrange(1, len(good))]
        return kind, cut + (frame(ENC.encode(valid(rng))) if rng.random() < 0.5 else b"")
    if kind == "oversized":
        size = rng.randrange(MAX_FRAME + 1, 2**32)
        return kind, struct.pack(">I", size) + rng.randbytes(rng.randrange(64))
    if kind == "wrong_tag":
        body = ENC.encode(valid(rng))
        fields = msgspec.msgpack.decode(body)
        wrong = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                            if c not in tags] + [7, None, ""])
        return kind, frame(ENC.encode([wrong, *fields[1:]]))
    if kind == "wrong_shape":
        tag = rng.choice(tags)
        shape = rng.choice([
            [tag],  # fields missing
            [tag, random_value(rng), random_value(rng), random_value(rng)],  # wrong types
            [tag, *[random_value(rng) for _ in range(12)]],  # too many fields
            {"k": tag, "id": 1},  # a map, not an array
            random_value(rng),  # not a message at all
        ])
        return kind, frame(ENC.encode(shape))
    if kind == "bitflip":
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return kind, bytes(data)
    if kind == "valid_then_garbage":
        return kind, good + frame(b"\xc1" + rng.randbytes(rng.randrange(8)))
    # big: a whole body of up to 4 MiB that is not a message; memory must not stay behind
    return kind, frame(b"\xc1" * rng.randrange(1 << 20, 4 << 20))


def oracle(codec: Any, data: bytes) -> tuple[str, list[Any]]:
    """("bad" | "cut" | "valid", the messages decoded before it went wrong or in all)."""
    reader = FrameReader(codec)
    try:
        msgs = reader.feed(data)
    except ProtocolError as exc:
        return "bad", exc.context["decoded"]
    return ("cut" if reader.pending else "valid"), msgs


def read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes its side (EOF) within `timeout`."""
    sock.setblocking(False)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the peer did not close the channel"
        ready, _, _ = select.select([sock], [], [], remaining)
        if not ready:
            continue
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:  # closed with our unread bytes pending: also closed
            return b"".join(chunks)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send what the peer takes; a peer that closes mid-way (it rejected us) is fine."""
    sock.setblocking(True)
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


# ------------------------------------------------------------------ the worker's channel
def fuzz_tree():
    # stable_after=0: every protocol error is the first failure after a healthy run, so the
    # communication_error row restarts at once and never escalates (the matrix's rules).
    return Supervisor("root", max_restarts=10_000, max_seconds=1.0, children=[
        child("w", Target, stable_after=0.0), child("other", Target)])


def test_fuzzed_frames_into_a_worker_channel(start_tree, events, raw_channel):
    """Each case on its own raw channel: "bad" frames make the worker exit with reason
    protocol_error (communication_error, decided as a restart) and come back; "cut" then a
    hang-up drops only that channel; "valid" frames are served. The App (its own shared
    channel) keeps working throughout, and the sibling is never touched."""
    rng = seeded("worker channel")
    app = start_tree(fuzz_tree())
    other = app.call("other", "pid")
    tally = {"bad": 0, "cut": 0, "valid": 0}
    for n in range(WORKER_CASES):
        kind, data = mutated(rng, call_message, CALL_TAGS)
        verdict, _ = oracle(P.CALL_CODEC, data)
        if verdict == "valid":
            data += frame(ENC.encode(P.Call(id=SENTINEL, method="ping")))
        pid = app.call("w", "pid")
        chan = raw_channel(app, "w")
        send_all(chan.sock, data)
        what = f"case {n} ({kind}, {verdict}): {data[:40]!r}..."
        if verdict == "bad":
            tally["bad"] += 1
            read_to_eof(chan.sock, 10)  # the worker closed every channel and left
            events.wait_count("restarted", tally["bad"], "w")
            exited = events.named("exited", "w")[-1]
            assert (exited["pid"], exited["reason"], exited["category"]) == (
                pid, "protocol_error", "communication_error"), what
            assert exited["detail"].startswith("ProtocolError: call frame"), what
        elif verdict == "cut":
            tally["cut"] += 1
            chan.sock.shutdown(socket.SHUT_WR)  # the caller left in the middle of a frame
            read_to_eof(chan.sock, 10)  # the worker dropped that channel...
            assert app.call("w", "pid") == pid, what  # ...and nothing else
        else:
            tally["valid"] += 1
            reader = FrameReader(P.CALL_CODEC)
            replies = []
            while not any(getattr(m, "id", None) == SENTINEL for m in replies):
                ready, _, _ = select.select([chan.sock], [], [], 10)
                assert ready, what
                replies += reader.feed(chan.sock.recv(1 << 16))
            assert app.call("w", "pid") == pid, what
        chan.close()
        assert app.call("w", "echo", what) == what
    print(f"worker channel: {tally}")
    exits = events.named("exited", "w")
    assert len(exits) == tally["bad"]
    failures = events.named("failure", "w")
    assert {(f["category"], f["recovery"], f["action"]) for f in failures} <= {
        ("communication_error", "immediate_retry", "restart")}
    assert len(failures) == tally["bad"]
    assert app.call("other", "pid") == other
    assert events.named("exited", "other") == []


def test_an_oversized_length_prefix_is_rejected_from_the_header_alone(
        start_tree, events, raw_channel):
    """Four header bytes announcing a frame over the 64 MiB limit are enough: the worker
    does not wait for (or buffer) the body; it exits with protocol_error."""
    app = start_tree(fuzz_tree())
    chan = raw_channel(app, "w")
    chan.sock.sendall(struct.pack(">I", MAX_FRAME + 1))
    read_to_eof(chan.sock, 10)
    exited = events.wait_count("exited", 1, "w")[0]
    assert exited["reason"] == "protocol_error"
    assert "exceeds the limit of 67108864 bytes" in exited["detail"]
    events.wait_count("restarted", 1, "w")
    assert app.call("w", "ping") == "pong"


def test_a_reply_sent_to_a_worker_is_ignored(start_tree, events, raw_channel):
    """A frame that decodes but goes the wrong way (Reply, Fail: worker -> caller) is not a
    call: the worker ignores it and keeps serving that channel."""
    app = start_tree(fuzz_tree())
    pid = app.call("w", "pid")
    chan = raw_channel(app, "w")
    chan.sock.sendall(P.CALL_CODEC.encode(P.Reply(id=1, value="forged")) +
                      P.CALL_CODEC.encode(P.Fail(id=2, category="x", type="y", message="z")))
    cid = chan.send(lambda i: P.Call(id=i, method="pid"))
    assert chan.wait(cid, time.monotonic() + 10).value == pid
    assert events.named("exited", "w") == []


# ------------------------------------------------------------------ the control socket
SERVICE_TREE = """
[tree]
id = "fuzzed"

[[tree.children]]
id = "w"
worker = "tests.faults._workers:Target"
"""


def control_case(rng: random.Random) -> tuple[str, bytes, str]:
    """A fuzz case whose bytes cannot decode into a message that changes the tree."""
    while True:
        kind, data = mutated(rng, control_message, CONTROL_TAGS)
        verdict, msgs = oracle(P.CONTROL_CODEC, data)
        if not any(isinstance(m, HARMFUL) for m in msgs):
            return kind, data, verdict


def test_fuzzed_frames_into_a_supervisor_control_socket(service):
    """One connection per case: a "bad" frame gets that client dropped at once (EOF while
    we still hold our side open); "cut" and "valid" ones are dropped when we hang up. The
    supervisor survives every case (same pid, still answering requests and calls), its
    RSS stays within 20 MiB of where it was, and it holds no descriptor more."""
    rng = seeded("control socket")
    svc = service(SERVICE_TREE)
    proc = psutil.Process(svc.proc.pid)

    def run(cases: int) -> dict[str, int]:
        tally = {"bad": 0, "cut": 0, "valid": 0}
        for n in range(cases):
            kind, data, verdict = control_case(rng)
            with svc.connect() as sock:
                send_all(sock, data)
                if verdict != "bad":
                    sock.shutdown(socket.SHUT_WR)
                read_to_eof(sock, 10)  # for "bad": the server dropped us on its own
            tally[verdict] += 1
            assert svc.proc.poll() is None, f"case {n} ({kind}): {data[:40]!r}"
        return tally

    run(20)  # warm-up: the first frames grow the allocator's pools once
    rss_before, fds_before = proc.memory_info().rss, proc.num_fds()
    tally = run(CONTROL_CASES)
    print(f"control socket: {tally}")
    assert tally["bad"] > CONTROL_CASES / 2
    grown = (proc.memory_info().rss - rss_before) / (1 << 20)
    assert grown < 20, f"RSS grew by {grown:.1f} MiB"
    assert proc.num_fds() == fds_before
    with supervisor.connect(svc.socket) as app:
        assert app.pid == svc.proc.pid
        assert [i.id for i in app.which_children()] == ["w"]
        assert app.call("w", "ping") == "pong"
