"""Length-prefixed MessagePack frames: encoding, incremental decoding, socket helpers.

    frame = | length: 4 bytes, big-endian unsigned | body: `length` bytes of MessagePack |

    sender                                   receiver
    Codec.encode(msg) ----> one bytes ---->  recv_some(sock, reader)
      (the body encoded, its length            FrameReader.feed(chunk) -> [msg, ...]
       packed in front)                        FrameReader.eof()       -> None | ProtocolError

The reader tells apart the three ways a stream can go wrong, as CPython's
`multiprocessing.connection` does: a clean EOF between frames (`eof()` returns None), a frame
cut short by EOF (ProtocolError "connection closed mid-frame"), and a frame too large
(ProtocolError naming the length and the limit, raised from the 4 header bytes alone so that a
corrupt or hostile length never makes us buffer gigabytes). A body that does not decode is a
ProtocolError too. Whatever the bytes, `feed` and `eof` raise nothing but ProtocolError: that
is what keeps a supervisor alive when a child writes garbage on its channel. After an error
the reader is poisoned; the channel is closed and never trusted again.

The message types live in `supervisor.wire.messages`; this module knows nothing about them.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any

import msgspec

from supervisor.errors import EncodeError, ProtocolError

__all__ = ["MAX_FRAME", "HEADER", "Codec", "FrameReader", "send_frame", "recv_some"]

MAX_FRAME = 64 * 1024 * 1024
"""Default largest frame body, in bytes (64 MiB)."""

HEADER = 4
"""Bytes in a frame's length prefix."""

_LENGTH = struct.Struct(">I")
_unpack_length = _LENGTH.unpack_from
_pack_length = _LENGTH.pack
# What msgspec's encoder raises for a value it cannot encode.
_ENCODE_FAILURES = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)
_LENGTH_LIMIT = 0xFFFFFFFF  # what 4 header bytes can express


class Codec:
    """Encoder and decoder for one message union, built once and reused.

    ``Codec(CallMessage)``; `max_frame` bounds a frame's body in both directions; `name`
    labels error messages ("call", "control"). Safe to share between threads: msgspec holds
    the GIL through a whole encode or decode and keeps its scratch state per call, and every
    `encode` writes into a fresh buffer. Raises ValueError for a `max_frame` outside 1..2**32-1.
    """

    __slots__ = ("type", "name", "max_frame", "encoder", "decoder")

    def __init__(self, union_type: Any, max_frame: int = MAX_FRAME, *, name: str = "") -> None:
        if not 0 < max_frame <= _LENGTH_LIMIT:
            raise ValueError(f"max_frame must be in 1..{_LENGTH_LIMIT}, got {max_frame!r}")
        self.type = union_type
        self.name = name or repr(union_type)
        self.max_frame = max_frame
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(union_type)

    def encode(self, msg: Any) -> bytes:
        """Return the whole frame for `msg` (length prefix + body) as one bytes object.

        Raises EncodeError naming the type of a value msgspec cannot encode, or when the
        body exceeds `max_frame`.
        """
        # Header + body joined: measured 2.5x faster for a tiny message than encode_into a
        # growing bytearray copied out, and the same for a 10 MB one (one copy either way).
        try:
            body = self.encoder.encode(msg)
        except _ENCODE_FAILURES as exc:
            raise _encode_error(msg, exc) from exc
        size = len(body)
        if size > self.max_frame:
            raise self._too_large(msg, size)
        return _pack_length(size) + body

    def encode_many(self, msgs: Iterable[Any]) -> bytes:
        """Return the frames of every message back to back in one buffer (coalesced write).

        Equal to ``b"".join(map(self.encode, msgs))``; raises as `encode` does, and then
        nothing is returned (no partial batch to write by mistake).
        """
        parts: list[bytes] = []
        add = parts.append
        encode = self.encoder.encode
        for msg in msgs:
            try:
                body = encode(msg)
            except _ENCODE_FAILURES as exc:
                raise _encode_error(msg, exc) from exc
            if len(body) > self.max_frame:
                raise self._too_large(msg, len(body))
            add(_pack_length(len(body)))
            add(body)
        return b"".join(parts)

    def _too_large(self, msg: Any, size: int) -> EncodeError:
        return EncodeError(
            f"{type(msg).__name__} message of {size} bytes exceeds the "
            f"{self.name} frame limit of {self.max_frame} bytes"
        )

    def decode(self, body: bytes | bytearray | memoryview) -> Any:
        """Decode one frame body (without its length prefix).

        Raises ProtocolError when it is not exactly one message of this codec's union.
        """
        try:
            return self.decoder.decode(body)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise ProtocolError(
                f"{self.name} frame of {len(body)} bytes does not decode: {exc}"
            ) from exc
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            # Defence in depth: msgspec documents only DecodeError for bad input, but a
            # supervisor must survive any bytes a dying or buggy child writes.
            raise ProtocolError(
                f"{self.name} frame of {len(body)} bytes does not decode: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"Codec({self.name}, max_frame={self.max_frame})"


def _encode_error(msg: Any, exc: BaseException) -> EncodeError:
    """Turn msgspec's encode failure into an EncodeError whose message names the type."""
    if isinstance(exc, OverflowError):
        # msgspec's text ("can't serialize ints < -2**63 ...") does not say "int".
        return EncodeError(f"cannot encode a value of type int: {exc}")
    text = str(exc)  # "Encoding objects of type Foo is unsupported"
    if "type" not in text:
        # RecursionError (nesting deeper than msgspec's limit, or a cycle) names no type.
        text = f"{text} (while encoding a {type(msg).__name__} message)"
    return EncodeError(f"cannot encode: {text}")


class FrameReader:
    """Incremental frame decoder for one channel, fed whatever each read returned.

    `feed(data)` returns every message completed by `data`, in order; bytes of an incomplete
    frame stay buffered (`pending`). Frames split at any byte and many frames per read are
    both fine. Only ProtocolError ever escapes `feed` and `eof`; after one, the reader is
    poisoned and every later call raises ProtocolError("channel already failed: ...").
    Messages decoded in the same `feed` before a bad frame are on the error as
    ``error.context["decoded"]`` (e.g. an `Exit` sent just before garbage).

    Buffering: when nothing is pending, frames are decoded straight out of `data` and only
    the tail of an incomplete frame is copied. Otherwise `data` is appended to a bytearray,
    decoded at a moving offset, and the consumed prefix is dropped once per `feed`; the
    remainder then is part of one incomplete frame, so every byte is moved at most once
    (no quadratic copying, however a large frame is split).
    """

    __slots__ = ("codec", "_buf", "_failed", "_decode", "_limit")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._buf = bytearray()
        self._failed: str | None = None
        self._decode = codec.decoder.decode  # the fast path's, looked up once
        self._limit = HEADER + codec.max_frame

    @property
    def pending(self) -> int:
        """Bytes buffered towards a frame not yet complete."""
        return len(self._buf)

    @property
    def failed(self) -> str | None:
        """Why the reader was poisoned, or None while it is healthy."""
        return self._failed

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Add `data` and return the messages it completed (possibly none).

        `data` may be a view of a buffer the caller reuses: nothing keeps a reference to it.
        Raises ProtocolError for a length above `codec.max_frame` (from the header alone,
        before buffering the body), for a body that does not decode, and once poisoned.
        """
        if self._failed is not None:
            raise ProtocolError(f"channel already failed: {self._failed}")
        buf = self._buf
        if not buf:
            # The common case on a call channel: one read holds exactly one whole frame.
            # Decoded here without `_parse`'s loop and view (about half of a tiny call's
            # decoding cost); anything else, errors included, takes the general path.
            size = len(data)
            if HEADER < size <= self._limit and _unpack_length(data)[0] == size - HEADER:
                try:
                    return [self._decode(data[HEADER:])]
                except Exception:  # noqa: BLE001 - `_parse` reports it, with its context
                    pass
            msgs, used = self._parse(data)
            if used < len(data):
                with memoryview(data) as view:  # one copy of the tail, not two
                    buf += view[used:]
            return msgs
        buf += data
        msgs, used = self._parse(buf)
        if used:
            del buf[:used]
        return msgs

    def eof(self) -> None:
        """Report a clean EOF from the peer.

        Returns None when EOF fell between frames. Raises ProtocolError("connection closed
        mid-frame: got X of Y bytes") when a partial frame is buffered, and when poisoned.
        """
        if self._failed is not None:
            raise ProtocolError(f"channel already failed: {self._failed}")
        got = len(self._buf)
        if not got:
            return None
        if got < HEADER:
            text = f"connection closed mid-frame: got {got} of {HEADER} header bytes"
        else:
            (size,) = _LENGTH.unpack_from(self._buf, 0)
            text = f"connection closed mid-frame: got {got} of {HEADER + size} bytes"
        raise self._poison(text)

    def _parse(self, data: bytes | bytearray | memoryview) -> tuple[list[Any], int]:
        """Decode every complete frame at the start of `data`; return them and bytes used."""
        msgs: list[Any] = []
        end = len(data)
        pos = 0
        limit = self.codec.max_frame
        decode = self.codec.decoder.decode
        # The view must be released before the caller resizes the bytearray (BufferError:
        # "Existing exports of data"), hence the context manager. Decoded messages never
        # point into it: msgspec copies str and bytes values out of the input.
        with memoryview(data) as view:
            while end - pos >= HEADER:
                (size,) = _LENGTH.unpack_from(view, pos)
                if size > limit:
                    raise self._poison(
                        f"{self.codec.name} frame length {size} exceeds the limit of "
                        f"{limit} bytes (corrupt stream or misbehaving peer)",
                        msgs,
                    )
                stop = pos + HEADER + size
                if stop > end:
                    break
                try:
                    msgs.append(decode(view[pos + HEADER : stop]))
                except msgspec.DecodeError as exc:  # ValidationError included
                    raise self._poison(
                        f"{self.codec.name} frame of {size} bytes does not decode: {exc}", msgs
                    ) from exc
                except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                    # Defence in depth, as in Codec.decode: never let odd bytes raise
                    # anything but ProtocolError into a supervisor's loop.
                    raise self._poison(
                        f"{self.codec.name} frame of {size} bytes does not decode: "
                        f"{type(exc).__name__}: {exc}",
                        msgs,
                    ) from exc
                pos = stop
        return msgs, pos

    def _poison(self, text: str, decoded: list[Any] | None = None) -> ProtocolError:
        self._failed = text
        # Free whatever was buffered: the channel is dead and may have held a large frame.
        self._buf = bytearray()
        return ProtocolError(text, context={"decoded": decoded or []})


# ------------------------------------------------------------------------------ sockets

_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_FD_SIZE = struct.calcsize("i")
_local = threading.local()


def _recv_buffer(size: int) -> bytearray:
    # One buffer per thread, reused across reads: a supervisor is single-threaded, so it
    # owns exactly one, while App caller threads reading their own channels never share.
    # A per-reader buffer would cost `size` bytes per child (1,000 children = 256 MiB).
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = bytearray(size)
    return buf


def send_frame(sock: socket.socket, data: bytes, fds: Iterable[int] = ()) -> None:
    """Write `data` (one or more encoded frames) to `sock`, with `fds` as SCM_RIGHTS.

    The fds ride with the first byte of `data`, so the receiver gets them no later than
    the frame they belong to. Meant for blocking sockets (or sockets with a timeout): on a
    non-blocking socket a full buffer raises BlockingIOError after an unknown partial
    write, so non-blocking writers keep their own buffer and call ``sock.send``.
    Raises OSError when the peer is gone (BrokenPipeError, ConnectionResetError).
    """
    fds = list(fds)
    if not fds:
        sock.sendall(data)
        return
    sent = socket.send_fds(sock, [data], fds)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def recv_some(
    sock: socket.socket, reader: FrameReader, bufsize: int = 262144, maxfds: int = 0
) -> tuple[list[Any], list[int], bool]:
    """Read once from `sock` and return ``(messages, fds, eof)``.

    `messages` are those the read completed; `fds` are file descriptors received as
    SCM_RIGHTS (only when `maxfds` > 0), close-on-exec, in arrival order: they belong to the
    `OpenChannel` messages in the same order. An fd can arrive one read before its message
    completes, so keep a FIFO of fds and pop one per `OpenChannel`. `eof` is True when the
    peer closed; `reader.eof()` has then been called. BlockingIOError / InterruptedError
    (nothing to read right now) return ``([], [], False)``.

    Raises ProtocolError from the reader (after closing any fds this read received, so a
    bad frame leaks no descriptors), ProtocolError when more than `maxfds` fds arrived at
    once (the kernel dropped the rest), and OSError for a broken connection. Fds the
    kernel could not install here (we are out of descriptors) are simply missing.
    """
    buf = _recv_buffer(bufsize)
    fds: list[int] = []
    try:
        if maxfds > 0:
            nbytes, fds, truncated = _recvmsg_fds(sock, buf, bufsize, maxfds)
        else:
            nbytes = sock.recv_into(buf, bufsize)
            truncated = False
    except (BlockingIOError, InterruptedError):
        return [], [], False
    try:
        # One recvmsg returns the fds of at most one sendmsg. Fewer than there was room
        # for, yet truncated: the kernel could not install them here (EMFILE), and the
        # OpenChannel they came with arrives without its fd (its handler answers a
        # resource_error). As many as there was room for: a peer sending too many.
        if truncated and len(fds) >= maxfds:
            raise ProtocolError(
                f"more than {maxfds} file descriptors arrived in one read; "
                "the kernel dropped the rest"
            )
        if nbytes == 0:
            reader.eof()
            return [], fds, True
        with memoryview(buf) as view:
            msgs = reader.feed(view[:nbytes])
    except ProtocolError:
        _close_all(fds)
        raise
    return msgs, fds, False


def _recvmsg_fds(
    sock: socket.socket, buf: bytearray, bufsize: int, maxfds: int
) -> tuple[int, list[int], bool]:
    # socket.recv_fds is not used: on Python 3.11 it drops its `flags` argument, so
    # MSG_CMSG_CLOEXEC cannot be asked for, and a descriptor received without it is
    # inherited by any process forked before we close it (a leaked socketpair end keeps
    # EOF from ever reaching the worker's side). recvmsg_into also reuses our buffer.
    nbytes, ancdata, flags, _addr = sock.recvmsg_into(
        [memoryview(buf)[:bufsize]], socket.CMSG_SPACE(maxfds * _FD_SIZE), _CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % _FD_SIZE
            fds.extend(struct.unpack(f"{whole // _FD_SIZE}i", payload[:whole]))
    if not _CMSG_CLOEXEC:
        for fd in fds:  # portable fallback; racy against a concurrent fork, see above
            os.set_inheritable(fd, False)
    # CMSG_SPACE pads to 8 bytes, so room for one more fd than asked can exist: a peer
    # sending more than `maxfds` is caught either by MSG_CTRUNC or by the count.
    return nbytes, fds, bool(flags & socket.MSG_CTRUNC) or len(fds) > maxfds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:  # EBADF: already closed by someone else; nothing left to leak
            continue
