"""The wire codec: every message round-trips; anything else is a WireError."""

from __future__ import annotations

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
    wire.Work(4, [(9, b"y")], [4]),
    wire.Spill(0, 7, [1, 2, 3]),
    wire.Renew(1, 0, 7),
    wire.Release(1, 0, 7),
    wire.Revoke(0, 8),
    wire.Bye("shutdown"),
    wire.Finished([1, 2]),
    wire.Retaken(1, 9),
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


def test_readable_says_whether_a_whole_message_waits() -> None:
    ctx = zmq.Context()
    try:
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.bind("inproc://readable")
        push.connect("inproc://readable")
        assert not wire.readable(pull)
        push.send_multipart([b"a", b"b"])
        push.send(b"c")
        got = []
        while wire.readable(pull):  # the drain loops' form: no zmq.Again at the end
            got.append(pull.recv_multipart(zmq.NOBLOCK))
        assert got == [[b"a", b"b"], [b"c"]]
    finally:
        ctx.destroy(0)
