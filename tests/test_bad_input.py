"""Bad input fails only itself (issue 5): forged and broken frames at a live
coordinator, oversized and odd tasks, tasks that close their stdio."""

from __future__ import annotations

import os
import sys
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gmpd
from gmpd import wire
from tests.test_wire import SAMPLES

pytestmark = pytest.mark.timeout(120)


def square(x: int) -> int:
    return x * x


def _mutate(frame: bytes, data: st.DataObject) -> bytes:
    """Flip, insert, delete or truncate bytes of a valid frame."""
    out = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            out[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and out:
            del out[i]
        elif op == "truncate":
            del out[i:]
    return bytes(out)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)


@st.composite
def frames(draw: st.DrawFn) -> list[bytes]:
    """One bad message (one or more ZeroMQ frames)."""
    kind = draw(st.sampled_from(["random", "mutated", "typed", "forged", "multipart"]))
    if kind == "random":
        return [draw(st.binary(max_size=300))]
    if kind == "mutated":
        return [_mutate(wire.encode(draw(st.sampled_from(SAMPLES))), draw(st.data()))]
    if kind == "typed":  # well-formed msgpack, random kind, version and field types
        version = draw(st.sampled_from([wire.PROTOCOL, wire.PROTOCOL + 1, 0]))
        kind_no = draw(st.integers(0, 20))
        return [msgpack.packb([version, kind_no, *draw(st.lists(_values, max_size=7))], use_bin_type=True)]
    if kind == "forged":  # a well-formed message from a peer that is not who it says
        return [wire.encode(draw(st.sampled_from(SAMPLES)))]
    return [wire.encode(draw(st.sampled_from(SAMPLES))), b"", draw(st.binary(max_size=10))]


def test_fuzzed_frames_at_a_live_coordinator_are_dropped_and_counted() -> None:
    """Random, mutated, mistyped and forged frames, thrown at the coordinator
    while real work runs: each is dropped and counted, and every real task
    ends with the right result."""
    with gmpd.Executor(2) as ex:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ex._cluster.endpoint)
        sent = 0
        futures = []

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(frames())
        def throw(parts: list[bytes]) -> None:
            nonlocal sent
            # The samples' Hello names pid 123: never the client's, an M's or sysmon's.
            assert os.getpid() != 123
            sock.send_multipart(parts)
            sent += 1
            if sent % 20 == 0:
                futures.append(ex.submit(square, sent))

        try:
            throw()
            deadline = time.monotonic() + 20
            while ex.statistics().bad_frames < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ex.statistics().bad_frames == sent
            assert [f.result(timeout=30) for f in futures] == [
                (20 * (i + 1)) ** 2 for i in range(len(futures))
            ]
            assert ex.submit(square, 12).result(timeout=30) == 144
        finally:
            sock.close(0)
            ctx.term()


def test_a_frame_over_the_size_limit_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMPD_WIRE_MAX_MESSAGE_MB", "1")
    with gmpd.Executor(1) as ex:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ex._cluster.endpoint)
        try:
            sock.send(wire.encode(wire.Submit([(1, b"x" * (3 << 20))])))
            time.sleep(0.2)
            assert ex.submit(square, 5).result(timeout=30) == 25  # the coordinator serves on
        finally:
            sock.close(0)
            ctx.term()


def echo(data: bytes) -> bytes:
    return data


def make(nbytes: int) -> bytes:
    return b"r" * nbytes


def test_a_100_mb_argument_and_result_work() -> None:
    big = os.urandom(1 << 20) * 100
    with gmpd.Executor(1) as ex:
        assert ex.submit(echo, big).result(timeout=60) == big
        assert len(ex.submit(make, 100 << 20).result(timeout=60)) == 100 << 20


def test_a_task_or_result_over_the_configured_limit_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMPD_WIRE_MAX_MESSAGE_MB", "2")
    with gmpd.Executor(1) as ex:
        with pytest.raises(ValueError, match=r"over the 2 MiB limit \(\[wire\] max_message_mb"):
            ex.submit(echo, b"x" * (3 << 20)).result(timeout=30)
        with pytest.raises(gmpd.GmpdError, match=r"result is 3.0 MiB pickled, over the 2 MiB limit"):
            ex.submit(make, 3 << 20).result(timeout=30)
        assert ex.submit(echo, b"x" * (1 << 20)).result(timeout=30) == b"x" * (1 << 20)


class Custom(BaseException):
    pass


def raises_base_exception() -> None:
    raise Custom("not an Exception")


def raises_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def closes_stdio() -> int:
    sys.stdout.close()
    sys.stdin.close()
    sys.stderr.close()
    return os.getpid()


def prints() -> int:
    print("still printing")
    sys.stderr.write("and to stderr\n")
    return os.getpid()


def test_base_exceptions_fail_only_their_task() -> None:
    with gmpd.Executor(1) as ex:
        assert isinstance(ex.submit(raises_base_exception).exception(timeout=30), Custom)
        assert isinstance(ex.submit(raises_keyboard_interrupt).exception(timeout=30), KeyboardInterrupt)
        assert ex.submit(square, 3).result(timeout=30) == 9
        assert ex.statistics().m_lost == 0


def test_a_task_that_closes_its_stdio_leaves_the_m_working() -> None:
    # spin_ms: the M keeps its P between tasks, so the next ones are its
    # own (with the default 2 ms it may park, and the other M run them all).
    with gmpd.Executor(1, spin_ms=2000) as ex:
        pid = ex.submit(closes_stdio).result(timeout=30)
        results = [ex.submit(prints).result(timeout=30) for _ in range(3)]
        assert pid in results  # the same M printed again
        assert ex.statistics().m_lost == 0
