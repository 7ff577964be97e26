"""The wire: every message between gmpd processes, typed at the edge.

A frame is one msgpack array ``[PROTOCOL, kind, field, ...]``.  ``decode``
checks the protocol version, the kind, the number of fields and every
field's type before it builds the message object, so nothing untyped gets
past this module; anything else raises :class:`WireError`, which receivers
count and drop (a bad frame never takes a process down).

Who sends what (ids: client task id ``tid``; M index ``m``; P index ``p``)::

    client -> coordinator   Hello, Submit(tasks, options), Cancel(tids), Finished(tids), Watch, Bye
    coordinator -> client   Welcome, Started(tids), Cancelled(tids, refused), Watching(tids)
                            (to its PULL socket; Started only once the client sent Watch)
    M -> client             Results(results)          (straight to the client: a datagram on its
                            node, else or if larger than DGRAM_MAX its PULL socket)
    M -> coordinator        Hello, LeaseRequest, GetWork, Prefetch, Spill, Release (Renew: an M on a node
                            the coordinator cannot read; none sends one yet)
    coordinator -> M        Grant(p, epoch, seq, work), Work(seq, work), Revoke(p, epoch), Bye
    sysmon -> coordinator   Hello, Retaken(p, epoch)   (it took a P from an M in a syscall)

Work is a list of root tasks ``(tid, payload)`` plus node-local G handles
(Gs spilled to the global queue by ``runqputslow``; their payload stays in
node shared memory).

``drain_more`` is how the receivers' drain loops read frames off a socket.

Results on one node go as Unix datagrams (``RESULTS_DGRAM``), sent by the
M's own thread: through ZeroMQ each send woke the M's IO thread, which took
the core from the M's next task (a send cost the M 60-290 us of wall, ~20
of them a 1 s farm), and the client's, before its own thread.  A datagram
is whole or not sent; one the client's queue has no room for, or larger
than DGRAM_MAX, goes by ZeroMQ instead (the client takes either).

Runs in: every gmpd process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import msgpack
import zmq

from gmpd.errors import GmpdError

PROTOCOL = 4
# The client's datagram socket, in its run directory: a name no longer than
# "client" (ZeroMQ's), since a Unix socket path holds at most 107 bytes.
RESULTS_DGRAM = "dg"
DGRAM_MAX = 60 << 10  # bytes: a Results frame larger goes by ZeroMQ (under the kernel's limit)


def beside_client(results: str, name: str) -> str | None:
    """The path of ``name`` in the client's run directory, beside its
    results endpoint (an ipc:// one: the client is on this node), or None."""
    if not results.startswith("ipc://"):
        return None
    return os.path.join(os.path.dirname(results[6:]), name)


class WireError(GmpdError, ValueError):
    """A frame that is not a valid gmpd message (dropped and counted by the receiver)."""


# -- field checkers: each returns the value (normalised) or raises WireError --

Check = Callable[[Any], Any]


def _u(bits: int) -> Check:
    top = 1 << bits

    def check(v: Any) -> int:
        if type(v) is not int or not 0 <= v < top:
            raise WireError(f"expected an unsigned {bits}-bit integer, got {v!r:.40}")
        return v

    return check


def _i32(v: Any) -> int:
    if type(v) is not int or not -(1 << 31) <= v < 1 << 31:
        raise WireError(f"expected a signed 32-bit integer, got {v!r:.40}")
    return v


def _bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise WireError(f"expected bytes, got {type(v).__name__}")
    return v


def _str(v: Any) -> str:
    if type(v) is not str or len(v) > 256:
        raise WireError(f"expected a short string, got {v!r:.40}")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise WireError(f"expected a bool, got {v!r:.40}")
    return v


def _list(item: Check) -> Check:
    def check(v: Any) -> list[Any]:
        if type(v) is not list:
            raise WireError(f"expected a list, got {type(v).__name__}")
        return [item(x) for x in v]

    return check


U8, U32, U64 = _u(8), _u(32), _u(64)
_TOP64 = 1 << 64


def _tasks(v: Any) -> list[tuple[int, bytes]]:
    """A list of (tid, payload): the hot path of Submit/Work, checked inline."""
    if type(v) is not list:
        raise WireError(f"expected a list, got {type(v).__name__}")
    out = []
    for item in v:
        if type(item) is not list or len(item) != 2:
            raise WireError(f"expected a (tid, payload) array, got {item!r:.40}")
        tid, payload = item
        if type(tid) is not int or not 0 <= tid < _TOP64 or type(payload) is not bytes:
            raise WireError(f"bad (tid, payload) item {item!r:.40}")
        out.append((tid, payload))
    return out


def _results(v: Any) -> list[tuple[int, int, bytes]]:
    """A list of (tid, status, payload): the hot path of Results, checked inline."""
    if type(v) is not list:
        raise WireError(f"expected a list, got {type(v).__name__}")
    out = []
    for item in v:
        if type(item) is not list or len(item) != 3:
            raise WireError(f"expected a (tid, status, payload) array, got {item!r:.40}")
        tid, status, payload = item
        if (
            type(tid) is not int
            or not 0 <= tid < _TOP64
            or type(status) is not int
            or not 0 <= status < 256
            or type(payload) is not bytes
        ):
            raise WireError(f"bad (tid, status, payload) item {item!r:.40}")
        out.append((tid, status, payload))
    return out


class Message:
    """Base of every wire message.  Subclasses are frozen dataclasses."""

    KIND: ClassVar[int]
    SCHEMA: ClassVar[tuple[Check, ...]]
    FIELDS: ClassVar[tuple[str, ...]]


_KINDS: dict[int, type[Message]] = {}
M = TypeVar("M", bound=type[Message])


def _message(kind: int, *schema: Check) -> Callable[[M], M]:
    def register(cls: M) -> M:
        if kind in _KINDS:
            raise AssertionError(f"wire kind {kind} registered twice")
        cls.KIND, cls.SCHEMA = kind, schema
        cls.FIELDS = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        if len(cls.FIELDS) != len(schema):
            raise AssertionError(f"{cls.__name__}: {len(cls.FIELDS)} fields, {len(schema)} checkers")
        _KINDS[kind] = cls
        return cls

    return register


# Result status values.  LOST: every attempt died with its M (a child G's
# record carries no error payload then; the reader raises gmpd.WorkerLost).
OK, RAISED, LOST = 0, 1, 2


@_message(1, _str, U32, _str, _i32, _str)
@dataclass(frozen=True, slots=True)
class Hello(Message):
    role: str  # "client", "m" or "sysmon"
    pid: int
    node: str  # node segment name ("" for a client)
    m: int  # M index (-1 for a client)
    reply_to: str = ""  # a client's PULL endpoint: the coordinator answers there


@_message(2, U32)
@dataclass(frozen=True, slots=True)
class Welcome(Message):
    nprocs: int


def _rows(*names: str) -> Check:
    """A list of [u64, ...] items, one value per name."""
    shape = f"expected [{', '.join(names)}] items"

    def check(v: Any) -> list[list[int]]:
        out = _list(_list(U64))(v)
        if any(len(item) != len(names) for item in out):
            raise WireError(shape)
        return out  # type: ignore[no-any-return]

    return check


@_message(3, _tasks, _rows("tid", "retries", "timeout_ms"), _rows("tid", "slot", "seq", "node"))
@dataclass(frozen=True, slots=True)
class Submit(Message):
    tasks: list[tuple[int, bytes]]
    options: list[list[int]] = field(default_factory=list)  # [tid, retries, timeout_ms]: non-default only
    # [tid, slot, seq, node]: also offered in node memory (gmpd.offer); node: its creator pid
    offers: list[list[int]] = field(default_factory=list)


@_message(4, _list(U64))
@dataclass(frozen=True, slots=True)
class Cancel(Message):
    tids: list[int]


@_message(5, _list(U64))
@dataclass(frozen=True, slots=True)
class Started(Message):
    tids: list[int]


@_message(6, _results)
@dataclass(frozen=True, slots=True)
class Results(Message):
    results: list[tuple[int, int, bytes]]


@_message(7, _list(U64), _list(U64))
@dataclass(frozen=True, slots=True)
class Cancelled(Message):
    """The answer to one Cancel: every tid it named is in exactly one list."""

    tids: list[int]  # withdrawn: they will never run
    refused: list[int]  # taken by an M already (or finished, or unknown)


@_message(8, U32, _bool)
@dataclass(frozen=True, slots=True)
class LeaseRequest(Message):
    m: int
    has_g: bool  # back from a syscall with a G to finish: first in line for a freed P


@_message(9, _i32, U32, U32, U32, _tasks, _list(U32))
@dataclass(frozen=True, slots=True)
class Grant(Message):
    p: int  # -1: no P is free
    epoch: int
    ttl_ms: int
    seq: int  # numbers the batch (0: none), see Work
    roots: list[tuple[int, bytes]]
    locals: list[int]


@_message(10, U32, U32, U32, U32, U32)
@dataclass(frozen=True, slots=True)
class GetWork(Message):
    m: int
    p: int
    epoch: int
    max: int
    wait_ms: int  # 0: answer now; else hold the request until work or timeout


@_message(19, U32, U32, U32, U32)
@dataclass(frozen=True, slots=True)
class Prefetch(Message):
    """GetWork before the M's queue runs dry (gmpd/m.py, prefetch): the
    answer is a Work now, empty if the global queue is, and its batch is
    revocable until the M claims it (m_claim_batch)."""

    m: int
    p: int
    epoch: int
    max: int


@_message(11, U32, _tasks, _list(U32))
@dataclass(frozen=True, slots=True)
class Work(Message):
    """A global batch.  ``seq`` numbers the batches sent to one M (0: an
    empty one); the M records in node memory how many items of batch
    ``seq`` it has queued, so recovery knows which it never did."""

    seq: int
    roots: list[tuple[int, bytes]]
    locals: list[int]


@_message(12, U32, U32, _list(U32))
@dataclass(frozen=True, slots=True)
class Spill(Message):
    p: int
    epoch: int
    handles: list[int]


@_message(13, U32, U32, U32)
@dataclass(frozen=True, slots=True)
class Renew(Message):
    m: int
    p: int
    epoch: int


@_message(14, U32, U32, U32)
@dataclass(frozen=True, slots=True)
class Release(Message):
    m: int
    p: int
    epoch: int


@_message(15, U32, U32)
@dataclass(frozen=True, slots=True)
class Revoke(Message):
    p: int
    epoch: int


@_message(16, _str)
@dataclass(frozen=True, slots=True)
class Bye(Message):
    reason: str


@_message(17, _list(U64))
@dataclass(frozen=True, slots=True)
class Finished(Message):
    """From a client: these root tasks' results reached it, so the
    coordinator forgets them (until then a lost M's tasks are retried)."""

    tids: list[int]


@_message(20)
@dataclass(frozen=True, slots=True)
class Watch(Message):
    """From a client: from now on, tell me which tasks Ms take (Started).
    Sent once, when user code first asks a pending future ``running()``:
    a Started per global batch cost a farm ~4 thread wake-ups in three
    processes (~5 ms of CPU a 1 s run on 2 cores) that nobody read."""


@_message(21, _list(U64))
@dataclass(frozen=True, slots=True)
class Watching(Message):
    """The answer to Watch: the client's tasks Ms have now; Started
    messages follow for those taken later."""

    tids: list[int]


@_message(18, U32, U32)
@dataclass(frozen=True, slots=True)
class Retaken(Message):
    """sysmon's retake: P ``p`` went from an M in a syscall to idle under
    ``epoch`` (already so in the P's state word); the coordinator updates its
    lease table and hands the P on (handoffp)."""

    p: int
    epoch: int


def encode(msg: Message) -> bytes:
    """One frame for ``msg``."""
    out: bytes = msgpack.packb(
        [PROTOCOL, msg.KIND, *(getattr(msg, f) for f in msg.FIELDS)], use_bin_type=True
    )
    return out


def decode(frame: bytes) -> Message:
    """The message in ``frame``, fully type-checked, or :class:`WireError`."""
    try:
        obj = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise WireError(f"not a msgpack frame: {exc}") from None
    if type(obj) is not list or len(obj) < 2:
        raise WireError("a frame is an array [protocol, kind, ...]")
    if obj[0] != PROTOCOL:
        raise WireError(f"protocol version {obj[0]!r:.20} is not {PROTOCOL}")
    cls = _KINDS.get(obj[1]) if type(obj[1]) is int else None
    if cls is None:
        raise WireError(f"unknown message kind {obj[1]!r:.20}")
    values = obj[2:]
    if len(values) != len(cls.SCHEMA):
        raise WireError(f"{cls.__name__} has {len(cls.SCHEMA)} fields, the frame has {len(values)}")
    return cls(*(check(v) for check, v in zip(cls.SCHEMA, values, strict=True)))


def readable(sock: zmq.Socket[bytes]) -> bool:
    """A whole message waits on ``sock`` (ZMQ_EVENTS)."""
    return bool(int(sock.get(zmq.EVENTS)) & zmq.POLLIN)


def drain_more(sock: zmq.Socket[bytes], n: int, polled: bool) -> bool:
    """Whether a drain loop reads its ``n``-th message (from 0) from
    ``sock``: the first only if ``polled`` (zmq_poll saw it readable; it
    reads ZMQ_EVENTS itself, so a message that came after it is seen at the
    next poll, at once), the second if ZMQ_EVENTS says so, any after that
    (the loop then ends on zmq.Again).  pyzmq builds that exception in
    Python (~4 us warm, more cold; 7-14% of the coordinator's and the
    client thread's py-spy samples in farm and blocking_mix, where most
    wake-ups bring one message): such a wake-up now never pays it, and a
    flood's drain pays it once, not ZMQ_EVENTS (~2.5 us) per message.  A
    wake-up for something else (a timer, a datagram) pays neither: that
    ZMQ_EVENTS cost the client's IO thread a median 40 us, cold, at each of
    its ~40 datagram wake-ups in a farm."""
    return n >= 2 or (n == 0 and polled) or (n == 1 and readable(sock))


def kinds() -> dict[int, type[Message]]:
    """Every registered message class by kind (for tests and fuzzing)."""
    return dict(_KINDS)
