"""The wire codec: every message round-trips; anything else is a WireError."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from gmpd import wire

SAMPLES: list[wire.Message] = [
    wire.Hello("client", 123, "", -1, "ipc:///run/gmpd-x/client"),
    wire.Welcome(4),
    wire.Submit([(1, b"payload"), (2**64 - 1, b"")]),
    wire.Submit([(1, b"payload")], [[1, 0, 2500]]),
    wire.Submit([(1, b"payload")], [], [[1, 3, 17, 4242]]),
    wire.Cancel([1, 2]),
    wire.Started([3]),
    wire.Results([(1, wire.OK, b"r"), (2, wire.RAISED, b"e")]),
    wire.Cancelled([], [4]),
    wire.LeaseRequest(3, True),
    wire.Grant(-1, 0, 0, 0, [], []),
    wire.Grant(1, 7, 500, 3, [(5, b"x")], [1 << 22 | 9]),
    wire.GetWork(1, 0, 7, 128, 2),
    wire.Prefetch(1, 0, 7, 128),
    wire.Work(4, [(9, b"y")], [4]),
    wire.Spill(0, 7, [1, 2, 3]),
    wire.Renew(1, 0, 7),
    wire.Release(1, 0, 7),
    wire.Revoke(0, 8),
    wire.Bye("shutdown"),
    wire.Finished([1, 2]),
    wire.Retaken(1, 9),
    wire.Watch(),
    wire.Watching([3, 5]),
]


def test_wire_every_kind_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(wire.kinds().values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_wire_roundtrip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"\xc1", "not a msgpack frame"),
        (msgpack.packb({"a": 1}), "array"),
        (msgpack.packb([wire.PROTOCOL + 1, 1, "client", 1, "", -1, ""]), "protocol version"),
        (msgpack.packb([wire.PROTOCOL, 999]), "unknown message kind"),
        (msgpack.packb([wire.PROTOCOL, "1"]), "unknown message kind"),
        (msgpack.packb([wire.PROTOCOL, 2]), "fields"),
        (msgpack.packb([wire.PROTOCOL, 2, -1]), "unsigned"),
        (msgpack.packb([wire.PROTOCOL, 3, [[1, "not bytes"]], [], []], use_bin_type=True), "tid, payload"),
        (msgpack.packb([wire.PROTOCOL, 3, [[1]], [], []], use_bin_type=True), "tid, payload"),
        (msgpack.packb([wire.PROTOCOL, 3, [[1, b""]], [], [[1, 2]]], use_bin_type=True), "slot, seq, node"),
        (msgpack.packb([wire.PROTOCOL, 8, 1, 1]), "bool"),
        (msgpack.packb([wire.PROTOCOL, 2, True]), "unsigned"),
        (msgpack.packb([wire.PROTOCOL, 1, "x" * 300, 1, "", -1, ""]), "short string"),
    ],
)
def test_wire_rejects_bad_frames(frame: bytes, match: str) -> None:
    with pytest.raises(wire.WireError, match=match):
        wire.decode(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_wire_random_bytes_only_ever_raise_wire_error(frame: bytes) -> None:
    try:
        msg = wire.decode(frame)
    except wire.WireError:
        return
    assert isinstance(msg, wire.Message)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_wire_mutated_frames_decode_or_raise_wire_error(msg: wire.Message, data: st.DataObject) -> None:
    frame = bytearray(wire.encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    try:
        out = wire.decode(bytes(frame))
    except wire.WireError:
        return
    assert wire.decode(wire.encode(out)) == out


@contextmanager
def pull_push(tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Poller]]:
    """A PULL socket, a PUSH connected to it, and a Poller watching the PULL."""
    ctx = zmq.Context()
    try:
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.bind(f"ipc://{tmp_path}/drain")
        push.connect(f"ipc://{tmp_path}/drain")
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        yield pull, push, poller
    finally:
        ctx.destroy(0)


def test_a_drain_reads_every_message_and_poll_still_wakes_for_the_next(tmp_path: Path) -> None:
    """The drain loops' form (wire.drain_more): one message, ZMQ_EVENTS
    once, then until zmq.Again.  After a drain that ended on ZMQ_EVENTS
    (which consumes the socket fd's edge), Poller.poll must still wake at
    once for a message sent later (zmq_poll re-reads ZMQ_EVENTS)."""
    with pull_push(tmp_path) as (pull, push, poller):

        def drain() -> list[list[bytes]]:
            polled = pull in dict(poller.poll(2000))
            got = []
            for n in range(100):
                if not wire.drain_more(pull, n, polled):
                    break
                try:
                    got.append(pull.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            return got

        assert not wire.readable(pull)
        for batch in ([[b"a", b"b"]], [[b"c"], [b"d"], [b"e"]], [[b"f"]]):
            for frames in batch:
                push.send_multipart(frames)
            deadline = time.monotonic() + 2
            got: list[list[bytes]] = []
            while len(got) < len(batch) and time.monotonic() < deadline:
                got += drain()
            assert got == batch
            assert not wire.readable(pull)
        push.send(b"late")
        t = time.monotonic()
        assert dict(poller.poll(2000)) and time.monotonic() - t < 1.0, "poll did not wake for a later message"
        assert drain() == [[b"late"]]


def test_a_drain_woken_for_something_else_leaves_the_socket_to_the_next_poll(tmp_path: Path) -> None:
    """A wake-up the socket was not polled readable for (a timer, another
    fd) does not read ZMQ_EVENTS (~40 us cold on the client's datagram
    wake-ups); a message that came meanwhile is read at the next poll."""
    with pull_push(tmp_path) as (pull, push, poller):
        push.send(b"m")
        deadline = time.monotonic() + 2
        while not wire.readable(pull) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert wire.readable(pull), "the message never came"
        assert not wire.drain_more(pull, 0, False)
        assert pull in dict(poller.poll(2000)) and wire.drain_more(pull, 0, True)
        assert pull.recv(zmq.NOBLOCK) == b"m"
