"""An M: one worker process running the schedule loop of gmpd.sched.

One thread at a time holds the M (``M.holder``) and runs the loop and task
code: the main thread, or a standby thread that took the P over while the
holder's task blocked in gmpd.syscall() (Go's M is a thread: see
``M.takeover``).  A native thread (no GIL)
stamps the M's heartbeat in node memory, from which the coordinator renews
its P lease, so a task that never returns cannot stop the renewal; a
Python heartbeat thread sends results that wait behind a long G and exits
the process if the node agent dies, so no orphan M stays alive.

Runs in: an M process (forked by the node agent's template process).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import faulthandler
import os
import pickle
import random
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import cloudpickle
import zmq

from gmpd import config, offer, wire
from gmpd.errors import Deadlock, GmpdError, WorkerLost
from gmpd.future import LazyFuture
from gmpd.g import decode_task, dumps, error_payload, hint_imports, set_hint_pipe
from gmpd.offer import OFFER_FIFO
from gmpd.runq import PStatus, RunQ
from gmpd.sched import (
    DEEP_SLEEP,
    FAIRNESS_TICK,
    FORCE_PREEMPT_S,
    GLOBAL_BATCH,
    RETIRED,
    STEAL_TRIES,
    Counter,
    Doom,
    MState,
    steal_order,
)
from gmpd.shm import NodeMemory
from gmpd.sysmon import sysmon_slot

T = TypeVar("T")

REQUEST_TIMEOUT_MS = 10_000
HEARTBEAT_MS = 50  # the native heartbeat's period
FLUSH_EVERY = 64  # results per Results message at most
# A result waits this long for company (or FLUSH_EVERY results): each
# Results message costs the client two wake-ups (its IO thread, and the
# thread waiting in result()), ~70 us of CPU each here, which a busy 2-core
# farm takes from its tasks.  At 2 ms a 5 ms G's result went with the
# next one; at 10 ms, three to four go together: farm efficiency 0.91 ->
# 0.93 in A/B runs (with FINISHED_AGE 0.1 s), client CPU 65 -> 45 ms a
# run; at 25 ms (issue 6, tenth session; 6 A/B pairs each) farm 0.935-0.949
# -> 0.944-0.955, blocking_mix 1.154-1.207 -> 1.143-1.186, imbalance and
# noop_submit unchanged; at 50 ms (seventeenth session, 5 A/B pairs of 3
# fresh executors, once extra M starts no longer blurred the figure) the
# client's CPU 51-67 -> 36-40 us a task and farm 0.952-0.965 -> 0.966-0.971
# (100 ms: the client 36-37, no better, then); at 100 ms (eighteenth
# session, once Started messages were gone: 4 alternated bench pairs) the
# client's CPU 16.3-17.7 -> 12.3-14.1 ms a 400-task run, farm 0.959-0.961
# -> 0.961-0.967 (a 10 s farm: client IO thread 8.8-11.2 -> 5.6-8.3 ms a
# second); 200 ms saved ~2.5 ms more.  A lone task is not delayed: an M
# whose queue runs dry flushes; a G that ran LONG_G sends at once.  What it
# costs: a result in a stream reaches its caller up to 100 ms after its G
# ended while its M has more queued, and an M killed loses up to 100 ms of
# results (their tasks run again).
FLUSH_AGE = 0.1
# A G that ran this long sends its result at once.  A message costs ~0.2-0.4
# ms of CPU in all processes, cold (the M's send, the client's wake-ups):
# < 1% of such a G.  At 10 ms (until the seventeenth session) every 10-20
# ms G sent alone, and those farms ran 0.955-0.959 against 0.968 for 5 ms
# Gs; at 50 ms, 0.962-0.968 (10 ms) and 0.964-0.976 (20 ms) in A/B runs.
LONG_G = 0.05
# The heartbeat thread's period: it sends results that wait behind a long
# G (the G-end check alone left them there until that G ended).  Waking it
# at each batch instead cost a 1 ms-task farm 30-70 us of M CPU a task
# (thread wake-ups, the GIL taken from the G).
LATE_FLUSH_S = 0.25
# An M whose queue holds fewer Gs than this after it took one asks for the
# next global batch (wire.Prefetch) while it runs them, if the global queue
# has any: without it the M sat in the GetWork round trip (~0.2 ms here)
# each time its queue ran dry, ~half its time in a noop flood.  The batch
# is the M's once it claims it before queueing its first item
# (m_claim_batch); until then the coordinator may take it back
# (revoke_prefetch): its M's P was retaken, or another M wants work and
# the batch has waited PREFETCH_HOLD_S behind a long or blocked G.
PREFETCH_AT = 32
# ...and only once those Gs, at the last one's length, would run out within
# this: with 5 ms Gs a batch asked for 31 Gs ahead waited ~150 ms in the
# socket, and was taken back whenever a G blocked (blocking_mix paid a
# wasted round trip a sleep); asked for beside the ring's last G, it still
# comes before that G ends.
PREFETCH_AHEAD_S = 0.002
# A prefetch's answer is looked for (ZMQ_EVENTS, ~1.5-2.5 us) at most this
# often: looked for between every two Gs of a noop flood, it was ~20% of
# the M's CPU (py-spy), and an answer asked for PREFETCH_AHEAD_S ahead can
# wait this long.
ANSWER_LOOK_S = 0.0001
MAX_INLINE_DEPTH = 32  # nesting bound for join-helping
# M.takeable: where the holder blocks, another thread of the M may take it over.
TAKE_SYSCALL = 1  # a gmpd.syscall(): a standby (sysmon wakes it) or a thread back from its own call
TAKE_JOIN = 2  # a join on a child running elsewhere: a thread back from its call only

CURRENT: M | None = None  # this process's M, while it runs task code


class Shutdown(Exception):
    """The coordinator said Bye, or stopped answering."""


class Retire(Exception):
    """This M leaves the pool on its own: idle too long, or recycled."""


TIMED = (b"T", b"t")  # payload prefixes of a task with a timeout (+ 4-byte ms): fail / retry on it


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a task, as text (the __cause__)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ImportWatch:
    """A ``sys.meta_path`` finder, first in line while a timed task is
    unpickled: it finds nothing, but the first import it sees calls
    ``importing`` (the deadline widens to the import grace); once the task
    is unpickled, ``imported`` is called if there was one (the timeout
    starts again).  Unpickling that imports nothing stays timed as it is."""

    def __init__(self, importing: Callable[[], None], imported: Callable[[], None]) -> None:
        self.importing, self.imported, self.seen = importing, imported, False

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if not self.seen:
            self.seen = True
            self.importing()


def run_payload(payload: bytes, watch: ImportWatch | None = None) -> tuple[int, bytes]:
    """Unpickle and call a task; (status, pickled result or exception).
    If unpickling imported modules, the template hears of them (gmpd.g's
    preloading), and ``watch`` (a task with a timeout) times the imports
    apart: the M's import of the task's modules is bounded by ``[m]
    import_grace_ms``, not by the task's timeout."""
    before = len(sys.modules)
    if watch is not None:
        sys.meta_path.insert(0, watch)
    try:
        fn, args, kwargs, files = decode_task(payload)
    except BaseException as exc:
        return wire.RAISED, error_payload(exc, " while unpickling the task")
    finally:
        if watch is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(watch)
        if len(sys.modules) > before:
            hint_imports(before)
    if watch is not None and watch.seen:
        watch.imported()
    try:
        result = fn(*args, **kwargs)
    except Shutdown:
        raise  # the cluster is going away while the task waited (a join, a syscall's exit)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the task, not the M
        return wire.RAISED, error_payload(exc, files=files)
    finally:
        try:  # cheap on the hot path; a task may close or replace them
            intact = not (sys.stdout.closed or sys.stderr.closed or sys.stdin.closed)
        except Exception:
            intact = False
        if not intact:
            repair_stdio()
    try:
        return wire.OK, dumps(result)
    except BaseException as exc:
        err = pickle.PicklingError(
            f"the task's result of type {type(result).__name__} cannot be pickled: {exc}"
        )
        return wire.RAISED, error_payload(err, " while pickling the result")


def repair_stdio() -> None:
    """A task closed sys.stdin, stdout or stderr: later tasks on this M must
    still be able to print, so open them again (on the same file descriptors,
    which CPython's std streams do not own; /dev/null if those are gone)."""
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        stream = getattr(sys, name, None)
        try:
            usable = stream is not None and not stream.closed
        except Exception:  # a replacement without .closed, or a broken one
            usable = False
        if not usable:
            try:
                stream = open(fd, mode, closefd=False, buffering=1 if mode == "w" else -1)  # noqa: SIM115
            except OSError:
                stream = open(os.devnull, mode)  # noqa: SIM115
            setattr(sys, name, stream)


def load_outcome(status: int, data: bytes) -> tuple[bool, Any]:
    """(ok, value-or-exception) from a status and payload; used by clients too."""
    if status == wire.LOST:
        return False, WorkerLost(
            "every attempt of this child task died with the worker process (M) running it"
        )
    try:
        value = cloudpickle.loads(data)
    except BaseException as exc:
        return False, GmpdError(
            f"cannot unpickle the task's {'result' if status == wire.OK else 'error'}: {exc}"
        )
    if status == wire.OK:
        return True, value
    err, text = value
    err.__cause__ = RemoteTraceback(text)
    return False, err


class ChildFuture(LazyFuture):
    """The future of a G spawned inside a task.  ``result()`` helps: while
    the child is not done, the waiting M runs Gs of its own P inline.

    It completes when ``result()``/``exception()`` collects it, so
    ``concurrent.futures.wait``/``as_completed`` over child futures are not
    supported yet (they would wait forever); call ``result()`` on each.
    Its Condition is made only if something looks (gmpd.future): a spawn
    costs ~10 µs less without one."""

    def __init__(self, m: M, handle: int) -> None:
        super().__init__()
        self._m, self._h = m, handle  # _h: 0 once collected or cancelled
        self._pid = os.getpid()

    def describe(self) -> str:
        return f"child G {self._h or '(collected)'}"

    def __del__(self) -> None:
        # Dropped unread (fire-and-forget): the G is freed once it is done.
        # (Not weakref.finalize: one per spawn cost ~3 µs.)  Only in the M
        # that spawned it: a process a task forked must not free its Gs.
        h, node = self._h, self._m.node
        if h and self._pid == os.getpid() and not node.closed:
            node.g_detach(h)

    def __copy__(self) -> ChildFuture:
        return self  # one G, one owner: a copy would detach it twice

    def __deepcopy__(self, memo: dict[int, object]) -> ChildFuture:
        return self

    def _collect(self, timeout: float | None) -> None:
        if self.done():
            return
        h = self._h
        status, data = self._m.wait_child(h, timeout)
        ok, value = load_outcome(status, data)
        self._h = 0
        self._m.node.g_free(h)
        if ok:
            self.set_result(value)
        else:
            self.set_exception(value)

    def cancel(self) -> bool:
        """Cancel the child if it has not started: it is claimed so it never runs."""
        if self.done():
            return self.cancelled()
        h = self._h
        if not self._m.node.g_claim(h):
            return False  # running or done already
        self._h = 0
        self._m.node.g_free(h)  # the claim's reference; its stale queue entry frees the rest
        return super().cancel()

    def result(self, timeout: float | None = None) -> Any:
        self._collect(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._collect(timeout)
        return super().exception(0)


@dataclasses.dataclass(slots=True)
class Unit:
    """A thread whose G blocks in a syscall while another thread holds the
    M: its G chain (``head``, the G it runs; ``bottom``, the outermost) and
    what it had of the M's per-G fields."""

    ident: int
    head: int
    bottom: int
    depth: int
    slice_start: float
    last_run: float
    deadline: int
    deadline_g: int
    join: bool  # blocked in a join (block_on_child), not a gmpd.syscall()


class M:
    def __init__(
        self, nm: NodeMemory, m: int, *, endpoint: str, results: str, lifeline: int, spin_ms: int
    ) -> None:
        self.nm, self.node, self.m = nm, nm.node, m
        self.nprocs = self.node.nprocs
        self.endpoint, self.lifeline, self.spin_ms = endpoint, lifeline, spin_ms
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(endpoint)
        self.out = self.ctx.socket(zmq.PUSH)  # results, to the client's PULL
        self.out.setsockopt(zmq.LINGER, 1000)
        self.out.connect(results)
        # Results on this node go as datagrams from the sending thread (wire.RESULTS_DGRAM).
        self.dgram_path = wire.beside_client(results, wire.RESULTS_DGRAM) or ""
        self.dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.dgram_path else None
        if self.dgram is not None:
            self.dgram.setblocking(False)
        # Offers (gmpd.offer): the client writes a byte to this FIFO in its
        # run directory when it offers a task; a spinning M polls it beside
        # its long-poll socket.
        self.offer_fd = open_offer_fifo(results)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        if self.offer_fd >= 0:
            self.poller.register(self.offer_fd, zmq.POLLIN)
        # An answer is still to come: a Prefetch's, or a long-poll's (took an offer meanwhile).
        self.awaiting = False
        self.look_at = 0.0  # when find_runnable next looks for a prefetch's answer (ANSWER_LOOK_S)
        self.p, self.epoch = -1, 0
        self.runq: RunQ | None = None
        self.curg = 0
        self.depth = 0
        self.slice_start = 0.0  # when the current time slice began
        self.fair_tick = -1  # the schedtick whose fairness check was done
        # Our P's queue may hold Gs that did not come from the global queue
        # (children, stolen, offered, or whatever the P held when we got it).
        # Only then can it starve the global queue, and only then does the
        # fairness tick take a global G first: a queue fed by global batches
        # alone holds Gs older than any left there, and that round trip (a
        # Prefetch, its answer, then a Started to the client: ~8 thread wake-ups)
        # every 61 Gs was ~10% of a 5 ms-task farm's control-plane wake-ups.
        self.local_fed = True
        self.last_run = 0.0  # seconds the last G this M ran took (prefetch)
        self.results: list[tuple[int, int, bytes]] = []
        # Global batches (seq, roots, locals) not queued yet: they came while we held no P.
        self.stash: list[tuple[int, list[tuple[int, bytes]], list[int]]] = []
        self.oldest = 0.0
        self.rng = random.Random(os.getpid())
        self.stopping = False
        conf = config.load()
        mconf = conf["m"]
        self.idle_exit_s, self.max_tasks = mconf["idle_exit_ms"] / 1000, mconf["max_tasks"]
        self.import_grace_ms = mconf["import_grace_ms"]
        self.max_message = conf["wire"]["max_message_mb"] << 20
        self.rss_limited = mconf["max_rss_mb"] > 0  # sysmon may doom us to retire (memcheck)
        self.result_bytes = 0  # in self.results
        self.result_gs: list[int] = []  # root Gs of self.results: freed once the results are sent
        self.sent_gs: list[int] = []  # root Gs of results sent, to free (by the main thread)
        # results, result_bytes, result_gs, oldest and the out socket are
        # shared with the heartbeat thread's late flush (flush_late).
        self.flush_lock = threading.Lock()
        self.spare = m > self.nprocs  # beyond the first GOMAXPROCS + 1: may exit when idle
        self.in_syscall = False  # inside gmpd.syscall() (or a blocked join)
        self.deadline = 0  # monotonic ns the running task must end by (0: none)
        self.deadline_g = 0  # the G whose timeout that is
        # Standby threads (takeover): one thread holds the M; the fields
        # above (P, queue, sockets, current G) are the holder's alone.
        self.max_threads = mconf["max_threads"]
        self.holder = threading.get_ident()
        self.baton = threading.Lock()  # holder, takeable, and the P's CAS between takeover and exitsyscall
        self.takeable = 0  # TAKE_SYSCALL, TAKE_JOIN: the holder blocks where it may be taken over
        self.units: list[Unit] = []  # threads whose G blocks in a syscall meanwhile, oldest first
        self.returners: collections.deque[tuple[int, threading.Event]] = collections.deque()
        self.threads = 1  # threads that run Gs or stand by for it
        self.bottom = 0  # the holder's outermost G
        self.hb: threading.Thread | None = None  # the heartbeat thread (heartbeat)

    # ---- talking to the coordinator ---------------------------------------

    def send(self, msg: wire.Message) -> None:
        self.sock.send(wire.encode(msg), copy=False)

    def recv(self, timeout_ms: int) -> wire.Message:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            # (Never below 0: recv(0) preempted for a millisecond between the
            # two clock reads raised Shutdown with a message waiting.)
            left = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sock.poll(left):
                raise Shutdown("the coordinator stopped answering")
            try:
                msg = wire.decode(self.sock.recv())
            except wire.WireError:
                continue
            if isinstance(msg, wire.Bye):
                raise Shutdown(msg.reason)
            return msg

    def call(self, msg: wire.Message, timeout_ms: int = REQUEST_TIMEOUT_MS) -> wire.Message:
        """A round trip to the coordinator.  Inside a task (a join's
        get_work) the M's state leaves RUNNING for it (a CAS, against
        sysmon's), so sysmon never takes the M's own socket wait for an
        unmarked blocking call of the task."""
        paused = bool(self.curg) and self.node.m_cas_state(self.m, MState.RUNNING, MState.IDLE)
        try:
            self.finish_wait()
            self.send(msg)
            return self.answer(timeout_ms, isinstance(msg, wire.LeaseRequest))
        finally:
            if paused:
                self.node.m_set(self.m, state=MState.RUNNING)  # only we change it from IDLE

    def answer(self, timeout_ms: int, grant_wanted: bool = False) -> wire.Message:
        """The coordinator's answer to our request."""
        reply = self.recv(timeout_ms)
        while isinstance(reply, wire.Grant) and not grant_wanted:
            # A second answer to a LeaseRequest (the coordinator sends one;
            # this is the net under that rule): a re-sent grant of the P we
            # hold, whose batch is ours to queue, in order, at the next look.
            self.stash_batch(reply)
            reply = self.recv(timeout_ms)
        return reply

    def finish_wait(self) -> None:
        """Read the answer to the long-poll we left when we took an offer
        (spin_poll): a batch in it is ours, queued in order at the next look.
        (A Revoke needs nothing here: the P's state word says it too, and
        check_lease and owns_p read that.)"""
        if self.awaiting:
            self.awaiting = False
            reply = self.answer(REQUEST_TIMEOUT_MS)
            if isinstance(reply, wire.Work) and (reply.roots or reply.locals):
                self.stash.append((reply.seq, reply.roots, reply.locals))

    def flush(self) -> None:
        """Results go straight to the client, which tells the coordinator
        (Finished): a result lost with this M is then a task to retry."""
        with self.flush_lock:
            self.send_results()
        self.free_sent()

    def send_results(self, flags: int = 0) -> None:
        """(flush_lock held.)  With zmq.NOBLOCK, a full queue to the client
        raises zmq.Again and leaves the results where they are."""
        if self.results:
            frame = wire.encode(wire.Results(self.results))
            if not self.send_dgram(frame):
                self.out.send(frame, flags, copy=False)
            self.results, self.result_bytes = [], 0
            self.sent_gs += self.result_gs
            self.result_gs = []

    def send_dgram(self, frame: bytes) -> bool:
        """Send ``frame`` to the client as one datagram; False if it did
        not go (too large, the client's queue full, its socket gone): then
        ZeroMQ takes it."""
        if self.dgram is None or len(frame) > wire.DGRAM_MAX:
            return False
        try:
            self.dgram.sendto(frame, self.dgram_path)
        except OSError:
            return False
        return True

    def free_sent(self) -> None:
        """Free the root Gs whose results are sent: kept (RUNNING, ours)
        until then so recovery saw them.  The main thread's alone: arena
        operations stay with the M that runs Gs."""
        if self.sent_gs:
            with self.flush_lock:
                gs, self.sent_gs = self.sent_gs, []
            for h in gs:
                self.node.g_free(h)

    def add_result(self, tid: int, status: int, data: bytes, h: int, started: float) -> None:
        """Queue a root's result (its G ``h``, 0 if none, started at
        ``started``).  Sent per FLUSH_EVERY, or once the oldest waited
        FLUSH_AGE, or at once if its G ran LONG_G: waiting for company, it
        would wait for the next G's end (as long, likely)."""
        if self.offer_fd >= 0:  # a client thread may wait on it in node memory (gmpd.offer)
            self.node.offer_reply(self.m, tid, status, data)
        with self.flush_lock:
            if self.result_bytes + len(data) > self.max_message:
                self.send_results()  # one message stays under the client's size limit
            self.results.append((tid, status, data))
            self.result_bytes += len(data)
            if h:
                self.result_gs.append(h)
            now = time.monotonic()
            if len(self.results) == 1:
                self.oldest = now
            # Per 64 or FLUSH_AGE: a message per result would cost the
            # client a wake-up each (CPU a busy 2-core farm takes from an M).
            if len(self.results) >= FLUSH_EVERY or now - self.oldest > FLUSH_AGE or now - started >= LONG_G:
                self.send_results()
        self.free_sent()

    def flush_late(self) -> None:
        """Heartbeat thread: send the results still waiting (the main thread
        runs a long G)."""
        with self.flush_lock:
            if not self.results or self.stopping or time.monotonic() - self.oldest <= FLUSH_AGE:
                return
            # Never blocking here: this thread also watches the lifeline,
            # and the main thread waits for the lock.  A client that reads
            # no more leaves them to the main thread.
            with contextlib.suppress(zmq.Again):
                self.send_results(zmq.NOBLOCK)

    def spill(self, batch: tuple[int, ...]) -> None:
        """A full ring's half + 1 go to the global queue (runqputslow).  The
        ring layer holds them for us (HELD) until the coordinator says it has
        them: if we die before, recovery finds them there, exactly once."""
        assert self.runq is not None
        self.call(wire.Spill(self.p, self.epoch, list(batch)))
        self.runq.release()
        self.node.sched_add(Counter.SPILLS, 1)

    # ---- P ---------------------------------------------------------------

    def adopt(self, grant: wire.Grant) -> None:
        """Install a granted P (CAS on its state word with the new epoch)."""
        while True:
            seen = self.node.p_state(grant.p)
            if seen[2] >= grant.epoch and seen[1] != self.m:
                # A newer grant exists: this one is stale, but its batch is
                # ours to queue (the coordinator counts it as taken).
                self.take_work(grant.seq, grant.roots, grant.locals)
                return
            if self.node.p_cas(grant.p, seen, (PStatus.RUNNING, self.m, grant.epoch)):
                break
        self.p, self.epoch = grant.p, grant.epoch
        self.runq = self.nm.runq(grant.p, self.m)
        self.local_fed = True
        self.wake_sysmon(deep_only=True)  # a P runs again: sysmon must watch it (unmarked blocks wake nobody)
        if not self.curg:
            self.node.m_set(self.m, p=grant.p, state=MState.IDLE)
        else:
            self.node.m_set(self.m, p=grant.p)
        self.take_work(grant.seq, grant.roots, grant.locals)

    def marked_p(self, word: tuple[int, int, int] | None = None) -> bool:
        """Our P (its state ``word``, read now if not given) is in SYSCALL
        though we are in no syscall: sysmon moved it there for a mark
        (mark_asleep) we had claimed already.  Nobody else moves it while
        our state says we run (retake skips it)."""
        if self.in_syscall or self.p < 0:
            return False
        return (word or self.node.p_state(self.p)) == (PStatus.SYSCALL, self.m, self.epoch)

    def stash_batch(self, grant: wire.Grant) -> None:
        """A Grant we did not ask for: its batch is ours (the coordinator
        counts it as taken), queued in order at our next look."""
        if grant.roots or grant.locals:
            self.stash.append((grant.seq, grant.roots, grant.locals))

    def check_lease(self) -> None:
        """After a G: if the P was retaken meanwhile (epoch moved), never
        touch its queue or arena again; the coordinator already re-leased it.
        A P marked_p is ours: back to RUNNING."""
        if self.p < 0 or self.node.p_held(self.p, self.m, self.epoch):
            return
        word = self.node.p_state(self.p)
        if self.marked_p(word):
            if self.node.exitsyscall(self.p, self.m, self.epoch):
                return
            word = self.node.p_state(self.p)
        if word != (PStatus.RUNNING, self.m, self.epoch):
            self.flush()
            self.node.m_set(self.m, p=-1)
            self.p, self.runq = -1, None

    def drop_p(self) -> None:
        """releasep, then tell the coordinator (stopm's first half)."""
        if self.p < 0:
            return
        self.finish_wait()  # (a batch in its answer is stashed: stopm gets a P for it)
        self.flush()
        # Again: sysmon may have marked us asleep as our last G ended and
        # moved the P to SYSCALL after the last look (retake leaves a P
        # whose M is IDLE or SPINNING alone: it is ours, back to RUNNING,
        # which releasep needs); or retaken it while we spun (its arena is
        # another M's then: no trim, no release).
        self.check_lease()
        if self.p < 0:
            return
        self.node.g_trim(self.p)  # going idle: give the arena's unused pages back
        # Our record first: an M's p never names a P that is not its own
        # (statistics, tests); recovery goes by the P's word, not by this.
        self.node.m_set(self.m, p=-1)
        self.node.releasep(self.p, self.m, self.epoch)
        self.send(wire.Release(self.m, self.p, self.epoch))
        self.p, self.runq = -1, None

    def owns_p(self) -> bool:
        return self.p >= 0 and self.node.p_held(self.p, self.m, self.epoch)

    def take_work(self, seq: int, roots: list[tuple[int, bytes]], locals_: list[int]) -> bool:
        """Queue a global batch in our P's queue, its first G in runnext so
        that it runs next; True if any was queued.  If sysmon took our P
        while the batch was on its way, its ring and arena are another M's
        now: keep the batch until we hold a P again (batches are queued in
        the order they came, which recovery relies on)."""
        if roots or locals_:
            self.stash.append((seq, roots, locals_))
        placed = False
        while self.stash and self.runq is not None and self.owns_p():
            placed = self.place(*self.stash.pop(0)) or placed
        if placed and self.runq is not None and len(self.runq):
            # More than the G we run next: an idle P's M may steal them
            # (Go's resetspinning; a short global queue comes whole to one P).
            self.wakep()
        return placed

    def place(self, seq: int, roots: list[tuple[int, bytes]], locals_: list[int]) -> bool:
        """Queue one batch, recording after each item how many are queued
        (``m_set_placing``): if this M dies meanwhile, recovery re-queues
        exactly the items that never reached a queue."""
        node, runq = self.node, self.runq
        assert runq is not None
        if seq and not node.m_claim_batch(self.m, seq):
            return False  # a prefetch the coordinator took back: its items are in the global queue again
        items: list[tuple[int, bytes] | int] = [*roots, *locals_]
        for n, item in enumerate(items, 1):
            h = self.new_root(*item) if isinstance(item, tuple) else item
            if h and (batch := runq.put_next(h) if n == 1 else runq.put(h)) is not None:
                self.spill(batch)
            if seq:
                node.m_set_placing(self.m, seq, n)
        node.sched_add(Counter.GLOBAL_TAKES, 1)
        return True

    def get_work(self, limit: int, wait_ms: int) -> int:
        """A global batch into our queue; the G to run first (0 if none)."""
        self.flush()
        reply = self.call(
            wire.GetWork(self.m, self.p, self.epoch, limit, wait_ms), REQUEST_TIMEOUT_MS + wait_ms
        )
        return self.take_reply(reply)

    def prefetch(self, limit: int) -> None:
        """Ask for a global batch and run on: its answer is read at a later
        look (find_runnable), and its batch claimed then (place).  Not
        while an answer is on its way, nor while a batch waits in the
        stash, unqueued (the coordinator can revoke only an M's newest
        batch, every earlier one queued), nor with the global queue empty."""
        if self.awaiting or self.stash or not self.node.sched()[Counter.GRQLEN]:
            return
        self.send(wire.Prefetch(self.m, self.p, self.epoch, limit))
        self.awaiting, self.look_at = True, time.monotonic() + ANSWER_LOOK_S

    def spin_poll(self, wait_ms: int) -> int:
        """get_work's long-poll as a spinning M, watching the offers too: the
        client's FIFO byte wakes us for one, and we run it at once, leaving
        the long-poll's answer to finish_wait.  A long-poll left so, still
        unanswered, serves again here: we wait for its answer or the next
        offer.  (We waited for that answer first, which the coordinator
        sends when it reads the offered task's Submit: on two busy cores
        the next offer often waited behind it, up to ~1 ms, and latency's
        p50 doubled in one executor in two.)"""
        self.flush()
        if not self.awaiting:
            self.send(wire.GetWork(self.m, self.p, self.epoch, GLOBAL_BATCH, wait_ms))
            self.awaiting = True
        end = time.monotonic() + (REQUEST_TIMEOUT_MS + wait_ms) / 1000
        while True:
            left = int((end - time.monotonic()) * 1000)
            if left < 0:
                raise Shutdown("the coordinator stopped answering")
            ready = dict(self.poller.poll(left))
            if self.sock in ready:
                self.awaiting = False
                return self.take_reply(self.answer(REQUEST_TIMEOUT_MS))
            if self.offer_fd in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.offer_fd, 4096)
                if g := self.take_offer():
                    return g  # (the long-poll's answer is finish_wait's, or the next spin_poll's)

    def take_offer(self) -> int:
        """An offered task (gmpd.offer) into our P's runnext: the G to run, or 0."""
        if self.offer_fd < 0 or self.runq is None or not self.owns_p():
            return 0
        got = self.node.offer_take(self.m)
        if got is None:
            return 0
        slot, seq, tid, payload = got
        offer_crash("taken")
        h = self.new_root(tid, payload)
        self.local_fed = True
        offer_crash("made")
        if h and (batch := self.runq.put_next(h)) is not None:
            self.spill(batch)
        offer_crash("put")
        offer.queued(self.node, slot, seq, self.m)
        self.node.sched_add(Counter.OFFERS, 1)
        return self.next_queued() if h else 0

    def new_root(self, tid: int, payload: bytes) -> int:
        """Root task ``tid`` as a G in our P's arena, or 0: a task too large
        for it fails alone, never the M."""
        try:
            return self.node.g_new(self.p, payload, root_id=tid)
        except MemoryError as exc:
            self.add_result(
                tid, wire.RAISED, error_payload(GmpdError(f"task too large: {exc}")), 0, time.monotonic()
            )
            return 0

    def take_reply(self, reply: wire.Message) -> int:
        """get_work's answer: queue its batch; the G to run first (0 if none)."""
        if isinstance(reply, wire.Revoke):
            self.p, self.runq = -1, None  # our lease is gone; the P is someone else's
            self.node.m_set(self.m, p=-1)
            return 0
        if isinstance(reply, wire.Work) and self.take_work(reply.seq, reply.roots, reply.locals):
            return self.next_queued()
        return 0

    def next_queued(self) -> int:
        """The G a batch just put in runnext (or whatever the queue has first)."""
        g = self.runq.get() if self.runq is not None else None
        return g or 0

    # ---- the schedule loop (gmpd.sched, steps 1-6) -------------------------

    def may_spin(self, sched: tuple[int, ...] | None = None) -> bool:
        """Go: become spinning only while spinners are under half the busy Ps."""
        sched = sched or self.node.sched()
        return 2 * sched[Counter.NMSPINNING] < self.nprocs - sched[Counter.NPIDLE]

    def steal(self, spinning: bool) -> int:
        """Go's stealWork, if this M spins or may become spinning."""
        assert self.runq is not None
        if (not spinning and not self.may_spin()) or not self.owns_p():
            return 0  # (a steal fills our own ring: never one of a P we lost while stopped)
        for i in range(STEAL_TRIES):
            for victim in steal_order(self.nprocs, self.rng):
                if victim == self.p:
                    continue
                g = self.runq.steal(victim, runnext=i == STEAL_TRIES - 1)
                if g is not None:
                    self.local_fed = True
                    self.node.sched_add(Counter.STEALS, 1)
                    self.node.sched_add(Counter.STOLEN, len(self.runq) + 1)
                    return g
        return 0

    def find_runnable(self) -> tuple[int, bool]:
        """(G, inherit_time), or (0, False) when there is nothing to run or
        the lease was revoked meanwhile (``self.runq`` is then None)."""
        if self.awaiting and (now := time.monotonic()) >= self.look_at:
            if wire.readable(self.sock):
                self.finish_wait()  # a prefetch's answer: its batch is stashed
            else:
                self.look_at = now + ANSWER_LOOK_S
        if self.stash and self.take_work(0, [], []):
            return self.next_queued(), False
        tick = self.node.p_ticks(self.p)[0] if self.local_fed else 0
        if tick % FAIRNESS_TICK == 0 and tick != self.fair_tick and tick > 0:
            self.fair_tick = tick  # once per tick: runnext chains do not advance it
            # (Go: only if the global queue is not empty.)  Its G runs at the
            # next look that finds the answer in: a round trip every 61 Gs
            # was most of a noop flood's GetWork, each a wait.
            self.prefetch(1)
        runq = self.runq
        if runq is None:
            return 0, False
        local = runq.get()
        if local is None:
            # (Filled from now on by global batches only, it holds older Gs than the rest.)
            self.local_fed = False
        if local is not None:
            queued = len(runq)
            if queued < PREFETCH_AT and queued * self.last_run < PREFETCH_AHEAD_S:
                self.prefetch(GLOBAL_BATCH)
            return local, runq.inherit_time
        g = self.take_offer()
        if not g:
            self.flush()  # out of local work: results wait for no company (nor for a steal)
        if not g and self.awaiting:
            self.finish_wait()  # a prefetch on its way: its batch, not another round trip
            if self.stash and self.take_work(0, [], []):
                g = self.next_queued()
        sched = self.node.sched()
        spin = self.may_spin(sched)
        if not g and (sched[Counter.GRQLEN] or not spin):
            # (With the global queue empty a spinning M's long-poll asks
            # anyway: spinning at once spares a round trip, and a task the
            # client submits meanwhile is offered to us.)
            g = self.get_work(GLOBAL_BATCH, 0)
            spin = spin and self.may_spin()
        if not g and self.runq is not None and spin:
            g = self.steal(True) or self.spin()
        return g, False

    def spin(self) -> int:
        """Out of work: look for some for spin_ms, as a spinning M."""
        self.node.sched_add(Counter.NMSPINNING, 1)
        self.node.sched_add(Counter.SPINS, 1)
        self.node.m_set(self.m, state=MState.SPINNING)
        try:
            deadline = time.monotonic() + self.spin_ms / 1000
            while time.monotonic() < deadline and self.runq is not None:
                if g := self.take_offer() or self.spin_poll(1):
                    return g
                if self.runq is not None and (g := self.steal(True)):
                    return g
            return 0
        finally:
            # State first: killed in between, we leave the count high (the
            # coordinator's repair_spinning takes it back), never low; and
            # never below 0 (the repair may have taken it back already).
            self.node.m_set(self.m, state=MState.IDLE)
            self.node.sched_dec(Counter.NMSPINNING)

    def stopm(self) -> None:
        """Park on the futex until woken, then ask for a P."""
        self.finish_wait()  # (a P lost while we ran an offered G: the answer must not pass for a Grant)
        self.flush()
        if self.stash:
            # Work came while our lease was being revoked: nobody would wake
            # us for it (it is in no queue), so get a P for it first in line.
            self.acquire_any_p()
            return
        node = self.node
        node.m_set(self.m, state=MState.PARKED)
        node.sched_add(Counter.NMIDLE, 1)
        node.sched_add(Counter.PARKS, 1)
        idle_until = time.monotonic() + self.idle_exit_s
        unasked: wire.Message | None = None
        try:
            while True:
                seen = node.m_info(self.m)[5]  # read the park word before the state: no lost wake-up
                state = node.m_info(self.m)[0]
                if state in (MState.WAKING, MState.GRANTED):
                    break
                if self.returners and node.m_cas_state(self.m, MState.PARKED, MState.IDLE):
                    break  # a thread back from its syscall: handover (schedule) gives it the M
                if self.spare and time.monotonic() > idle_until and not self.stash and not self.units:
                    # A CAS, so a coordinator waking us right now either wins or sees us gone.
                    if node.m_cas_state(self.m, MState.PARKED, MState.EXITING):
                        raise Retire("idle")
                    continue
                node.park(self.m, seen, min(1.0, self.idle_exit_s))
                if self.sock.poll(0):
                    unasked = self.recv(0)  # a Bye (raised), or the Grant a GRANTED wake brings
        finally:
            node.sched_add(Counter.NMIDLE, -1)
        if state not in (MState.WAKING, MState.GRANTED):
            if isinstance(unasked, wire.Grant):
                self.stash_batch(unasked)  # (a stray)
            return
        if state == MState.GRANTED:
            self.take_wake_grant(unasked)
            return
        if isinstance(unasked, wire.Grant):
            self.stash_batch(unasked)  # (a stray)
        node.m_set(self.m, state=MState.SPINNING)
        reply = self.call(wire.LeaseRequest(self.m, False))
        if isinstance(reply, wire.Grant) and reply.p >= 0:
            self.adopt(reply)

    # ---- syscalls (gmpd.syscall; sysmon retakes, gmpd.sysmon) ------------

    def entersyscall(self, takeable: bool = False) -> bool:
        """The P stays ours in status SYSCALL; we stop counting as running
        task code before the call can block.  False if we hold no P (or
        this thread does not hold the M: a nested call on a thread whose M
        was taken over).  ``takeable`` (gmpd.syscall): if the call lasts, a
        standby thread of this M may take the P over (takeover) rather
        than sysmon handing it to another M."""
        node = self.node
        if self.holder != threading.get_ident():
            return False
        self.resync()
        if self.p < 0:
            return False
        # Counted out before the P goes to SYSCALL: sysmon may retake it at
        # once and its next M counts itself (running_max read 3 on 2 Ps).
        node.sched_add(Counter.RUNNING, -1)
        if not node.entersyscall(self.p, self.m, self.epoch) and not self.marked_p():
            node.sched_add(Counter.RUNNING, 1)
            return False
        self.in_syscall = True
        node.sched_add(Counter.SYSCALLS, 1)
        # By CAS: sysmon may mark us ASLEEP at any instant, and then it took
        # our count too: one of the two goes back.
        if not node.m_cas_state(self.m, MState.RUNNING, MState.SYSCALL):
            if node.m_cas_state(self.m, MState.ASLEEP, MState.SYSCALL):
                node.sched_add(Counter.RUNNING, 1)
            else:
                node.m_set(self.m, state=MState.SYSCALL)  # (a state only we write)
        # Last: a takeover (or rejoin) finds the P and our state as a
        # syscall leaves them.  Takeable by a thread back from its own call
        # whether or not a standby exists: it must not wait for our call.
        if takeable:
            self.standby_ready()
            self.block(TAKE_SYSCALL)
        self.wake_sysmon()
        return True

    def wake_sysmon(self, deep_only: bool = False) -> None:
        """Wake sysmon if it sleeps: deep (every P looked idle: SYSMONWAIT
        holds DEEP_SLEEP), or, unless ``deep_only``, backed off (it holds
        1).  A P that runs again needs sysmon awake only if it deep-sleeps:
        a backed-off sleep ends within max_us anyway (waking it at every
        grant cost noop_map a fifth of its rate)."""
        if self.node.sched()[Counter.SYSMONWAIT] >= (DEEP_SLEEP if deep_only else 1):
            self.node.wake(sysmon_slot(self.node.nms))

    def exitsyscall(self) -> None:
        """Take our P back by CAS if sysmon did not retake it; else any idle
        P; else park until the coordinator hands us one.  Only then does
        the M run Python task code again (the GOMAXPROCS invariant).  A
        thread whose P a standby took over meanwhile waits for the M
        instead (rejoin)."""
        if self.takeable or self.holder != threading.get_ident():
            with self.baton:
                taken = self.holder != threading.get_ident()
                if not taken:
                    self.takeable = 0  # no standby may take the P now (else the flag is the holder's)
            if taken:
                self.rejoin()  # (then below: the P it holds is ours under our lease, else any)
        node = self.node
        if self.p < 0 or not (
            node.exitsyscall(self.p, self.m, self.epoch)
            # (sysmon marked us asleep but never took the P: still ours)
            or node.p_state(self.p) == (PStatus.RUNNING, self.m, self.epoch)
        ):
            self.p, self.runq = -1, None  # retaken: its queue is someone else's now
            node.m_set(self.m, p=-1)
            self.acquire_any_p()
        self.in_syscall = False
        node.sched_add(Counter.RUNNING, 1)
        node.m_set(self.m, state=MState.RUNNING)

    # ---- standby threads (Go's M is a thread) ------------------------------
    #
    # While a G blocks in gmpd.syscall(), Go hands its P to another thread.
    # Here that thread is a standby thread of the same process, parked on
    # its slot's standby word: sysmon, finding the P still in the syscall
    # after a tick, wakes one (gmpd.sysmon, standby), which takes the P back
    # under the same lease by the syscall's own CAS and holds the M from
    # then on: no other process (fork, imports, sockets) and no coordinator
    # round trip.  The GIL keeps one thread of a process running Python, as
    # one P allows.  The blocked thread, back, finds the M taken (exitsyscall)
    # and waits; the holder gives it the M at its next scheduling point
    # (handover) and stands by.  Recovery finds every G the M was running
    # by following curg and each G's outer: the blocked threads' chains are
    # kept on that path (relink), so a G blocked when its M died is charged
    # like the one running.

    def standby_ready(self) -> bool:
        """A standby thread is parked, or one is started now (up to
        max_threads): a call that lasts can be taken over."""
        if self.node.m_standby(self.m)[1]:
            return True
        if self.threads >= self.max_threads:
            return False
        self.threads += 1
        try:
            threading.Thread(target=self.standby_main, name="gmpd-standby", daemon=True).start()
        except RuntimeError:  # (can't start a thread: the P goes to another M, as with max_threads 1)
            self.threads -= 1
            return False
        return True

    def standby_main(self) -> None:
        """A standby thread's life: once it takes the M over, it holds it
        (the main thread may be blocked in a task, or standing by), and
        ends the process when the M ends."""
        try:
            self.stand_by()
            code = self.hold()
        except BaseException:
            traceback.print_exc()
            code = 1
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    def stand_by(self) -> None:
        """Park until this thread takes the M over."""
        node, me = self.node, threading.get_ident()
        while True:
            seen = node.m_standby(self.m)[0]
            node.standby_park(self.m, seen)
            with self.baton:
                took = self.takeover(me, standby=True)
            if took:
                # The next call that lasts needs a standby parked by then: one
                # started at its entry is not yet when sysmon looks.
                self.standby_ready()
                return

    def takeover(self, me: int, standby: bool) -> bool:
        """Thread ``me`` takes the M over from a holder blocked where that
        is allowed (``takeable``), under ``self.baton``.  A ``standby``
        takes only a gmpd.syscall()'s P, while the call still has it: the
        syscall's CAS back to RUNNING, under the same lease, arbitrates
        with the holder's exitsyscall.  A thread back from its own call
        also takes a holder in a join (which may wait on Gs that need this
        very thread to go on: it must not wait for the join), with the P
        if the join still has it, else without one."""
        node = self.node
        if not self.takeable or (standby and self.takeable != TAKE_SYSCALL):
            return False
        if self.p < 0 or not node.exitsyscall(self.p, self.m, self.epoch):
            if standby or (self.p >= 0 and node.p_state(self.p)[1:] == (self.m, self.epoch)):
                return False  # (a standby has nothing to run; a P still ours: its holder is leaving the call)
            self.p, self.runq = -1, None  # retaken (a join's): we ask for one (rejoin)
            node.m_set(self.m, p=-1)
        join = self.takeable == TAKE_JOIN
        ctx = (
            self.curg,
            self.bottom,
            self.depth,
            self.slice_start,
            self.last_run,
            self.deadline,
            self.deadline_g,
        )
        self.units.append(Unit(self.holder, *ctx, join))
        self.holder, self.takeable, self.in_syscall = me, 0, False
        self.curg = self.bottom = self.depth = self.deadline = self.deadline_g = 0
        self.slice_start, self.last_run = time.monotonic(), 0.0
        # Between Gs; its curg stays the blocked G (recovery's path), its
        # count stays out (the blocked thread took it out), its deadline in
        # the slot (publish_deadline).
        node.m_set(self.m, state=MState.IDLE, tid=threading.get_native_id(), blocked=self.blocked())
        node.sched_add(Counter.TAKEOVERS, 1)
        return True

    def blocked(self) -> int:
        """For sysmon's checkdead: threads of this M blocked in a
        gmpd.syscall() while another holds it (such an M may go on), plus
        those blocked in a join, << 16."""
        joins = sum(1 for u in self.units if u.join)
        return len(self.units) - joins + (joins << 16)

    def publish_deadline(self) -> None:
        """The slot's deadline (sysmon's watchdog): the first of the
        holder's and those of the Gs blocked on other threads, with the G
        whose timeout it is (recovery fails that one task, and runs the
        others the kill took again uncharged)."""
        ns, g = self.deadline, self.deadline_g
        for unit in self.units:
            if unit.deadline and (not ns or unit.deadline < ns):
                ns, g = unit.deadline, unit.deadline_g
        self.node.m_set_deadline(self.m, ns, g)

    def rejoin(self) -> None:
        """exitsyscall's first half for a thread whose P was taken over: get
        the M back, from the holder at its next scheduling point (or at once
        if the holder sits in a gmpd.syscall() itself), and our G's fields;
        exitsyscall then takes the P it holds, or any."""
        me, node = threading.get_ident(), self.node
        given = threading.Event()
        with self.baton:
            took = self.takeover(me, standby=False)
            if not took:
                self.returners.append((me, given))
        if not took:
            node.wake(self.m)  # the holder may be parked (stopm)
            given.wait()
        unit = next(u for u in self.units if u.ident == me)
        self.curg, self.bottom, self.depth = unit.head, unit.bottom, unit.depth
        self.slice_start, self.last_run = unit.slice_start, unit.last_run
        self.deadline, self.deadline_g = unit.deadline, unit.deadline_g
        # curg first: our Gs stay on recovery's path while relink moves the rest.
        node.m_set(self.m, curg=self.curg, tid=threading.get_native_id())
        self.units.remove(unit)
        self.relink()
        node.m_set(self.m, blocked=self.blocked())
        self.publish_deadline()

    def block(self, kind: int) -> None:
        """The holder blocks (``kind``: TAKE_SYSCALL, TAKE_JOIN): from now
        on another thread of the M may take it over, and a thread back
        from its call that waits for the M gets it at once (Go's handoffp,
        to an M that waits for a P): it asked while we ran, and waiting for
        our next scheduling point could be forever (a join whose child
        needs that thread).  In one hold of the lock with rejoin's check,
        or a returner could miss both."""
        given = None
        with self.baton:
            self.takeable = kind
            if self.returners:
                ident, event = self.returners[0]
                if self.takeover(ident, standby=False):
                    self.returners.popleft()
                    given = event
        if given is not None:
            given.set()

    def handover(self) -> None:
        """A scheduling point with a thread back from its syscall waiting:
        it gets the M (and our P, if we hold one); this thread stands by."""
        with self.baton:
            ident, given = self.returners.popleft()
            self.holder = ident
        given.set()
        self.stand_by()

    def chain(self) -> int:
        """The G a top-level G of the holder runs inside, for recovery:
        the last blocked thread's, else none."""
        return self.units[-1].head if self.units else 0

    def relink(self) -> None:
        """Keep every G this M runs on recovery's path (curg, then each
        G's outer): the holder's chain, then each blocked thread's, newest
        first.  After a blocked thread comes back out of order."""
        below = 0
        for unit in self.units:
            self.node.g_set_owner(unit.bottom, self.m, below)
            below = unit.head
        if self.bottom:
            self.node.g_set_owner(self.bottom, self.m, below)

    def in_task_thread(self) -> bool:
        """The calling thread runs a G of this M: the holder inside one, or
        a thread whose G blocks in a syscall while another holds the M."""
        me = threading.get_ident()
        if me == self.holder:
            return bool(self.curg)
        return any(u.ident == me for u in self.units)

    def resync(self) -> None:
        """A scheduling point inside a task: if sysmon found this M asleep in
        an unmarked blocking call (state ASLEEP), leave that "syscall" now:
        take the P back, or get another, before the task's code goes on
        (gmpd.sysmon explains the window before this)."""
        # Claimed by CAS: sysmon undoes its mark (ASLEEP -> RUNNING, the
        # count back) when it finds it marked a G that had ended; exactly one
        # of the two gives the count back, or it drifts (running_max 3 on 2 Ps).
        if self.curg and not self.in_syscall and self.node.m_cas_state(self.m, MState.ASLEEP, MState.IDLE):
            self.exitsyscall()

    def acquire_any_p(self) -> None:
        """exitsyscall's slow path: ask for an idle P (first in line, as an
        M holding a G), park until woken when there is none."""
        node = self.node
        while True:
            state = node.m_info(self.m)[0]
            if state == MState.GRANTED:  # woken with a Grant, after a "none" answer
                self.take_wake_grant(None)
                if self.p >= 0:
                    return
                continue  # (it went stale: ask)
            # ASKING while the request is out: a hand-off racing the answer
            # makes us WAKING (we ask again), never GRANTED (we would take
            # that Grant for this request's answer, and the answer for a
            # stray).  From PARKED by CAS: the coordinator may grant us now.
            if state != MState.PARKED:
                node.m_set(self.m, state=MState.ASKING)  # (no one else moves us out of these)
            elif not node.m_cas_state(self.m, MState.PARKED, MState.ASKING):
                continue
            reply = self.call(wire.LeaseRequest(self.m, True))
            if isinstance(reply, wire.Grant) and reply.p >= 0:
                self.adopt(reply)
                if self.p >= 0:
                    return
                continue  # it went stale before we took it (its P revoked): ask again
            seen = node.m_info(self.m)[5]  # before PARKED: a wake after it is not lost
            if not node.m_cas_state(self.m, MState.ASKING, MState.PARKED):
                continue  # woken while asking (WAKING): ask again
            node.sched_add(Counter.NMIDLE, 1)
            node.sched_add(Counter.PARKS, 1)
            node.park(self.m, seen, 0.1)  # then ask again: a missed hand-off costs 0.1 s
            node.sched_add(Counter.NMIDLE, -1)

    def take_wake_grant(self, unasked: wire.Message | None) -> None:
        """The coordinator woke us in state GRANTED: the Grant it stored in
        our slot, or else the one it sent with the wake (maybe read already,
        ``unasked``), stands for the LeaseRequest we would send; adopt it."""
        p, epoch = self.node.m_grant(self.m)
        if p >= 0:  # a hand-off: the P alone, its own ring to run (no message comes)
            if isinstance(unasked, wire.Grant):
                self.stash_batch(unasked)  # (a stray)
            self.adopt(wire.Grant(p, epoch, 0, 0, [], []))
        else:
            reply = unasked or self.recv(REQUEST_TIMEOUT_MS)
            if isinstance(reply, wire.Grant) and reply.p >= 0:
                self.adopt(reply)
        if self.p < 0:
            # It went stale before we took it (its P revoked): none is on the
            # way now.  IDLE, not PARKED: nobody may grant us before we park
            # again (a later blind PARKED would hide that Grant).
            self.node.m_cas_state(self.m, MState.GRANTED, MState.IDLE)

    def wakep(self) -> None:
        """Go's wakep, node-local: new Gs in our queue, an idle P, nobody spinning."""
        sched = self.node.sched()
        if sched[Counter.NMSPINNING] or not sched[Counter.NPIDLE]:
            return
        for other in range(self.node.nms):
            if other != self.m and self.node.m_cas_state(other, MState.PARKED, MState.WAKING):
                self.node.wake(other)
                self.node.sched_add(Counter.WAKEUPS, 1)
                return

    def schedule(self) -> None:
        while not self.stopping:
            if self.returners:
                self.handover()
                continue
            if self.p < 0:
                self.stopm()
                continue
            g, inherit = self.find_runnable()
            if inherit and time.monotonic() - self.slice_start > FORCE_PREEMPT_S:
                inherit = False  # the chain's slice is over (Go would preempt it here)
            if g:
                self.execute(g, inherit)
                self.check_lease()
                if not self.units and (
                    (self.max_tasks and self.node.m_info(self.m)[6] - self.tasks_before >= self.max_tasks)
                    or (self.rss_limited and self.node.m_doom(self.m)[1] == Doom.MEMORY)
                ):
                    # A batch we hold outside node memory (a long-poll's
                    # answer read after an offer) goes into the P's queue
                    # first: the coordinator forgets a retired M's batches.
                    # Not our P any more: retire after stopm got one for it.
                    self.finish_wait()
                    if self.stash and self.p >= 0:
                        self.take_work(0, [], [])
                    if not self.stash:
                        self.drop_p()  # its queued Gs stay with the P for the next M
                        raise Retire("recycled")
            elif self.p >= 0:
                self.drop_p()

    # ---- running Gs --------------------------------------------------------

    def execute(self, h: int, inherit: bool, claimed: bool = False) -> None:
        """Run G h: taken from a queue (``g_take`` arbitrates with a joiner
        that claimed it), or already ``claimed`` by this M as a joiner."""
        node = self.node
        assert self.runq is not None
        if not claimed and not node.g_take(h):
            self.runq.release()
            return  # a waiting parent ran it inline; its queue entry was stale
        if not inherit:
            self.slice_start = time.monotonic()
        outer = self.curg
        self.curg = h
        if not outer:
            self.bottom = h
        # In one call (node.g_begin): a new slice unless inherited (schedtick
        # + 1, the preempt flag was for the G before); the G's owner and
        # outer G (recovery follows curg -> outer after a crash); our state
        # RUNNING unless nested (running already; a mark sysmon set
        # meanwhile stays for resync to claim), then curg; the op record
        # released (recorded as curg: the queue no longer needs to hold
        # it); the RUNNING count + 1 unless nested (an M counts once,
        # however deep it nests inline runs).
        payload, parent, root_id = node.g_begin(
            h, self.m, self.p, outer or self.chain(), not inherit, -1 if outer else MState.RUNNING
        )
        deadline, deadline_g = self.deadline, self.deadline_g
        watch = None
        if payload[:1] in TIMED:  # a task with a timeout: sysmon kills us past the deadline
            ms = int.from_bytes(payload[1:5], "little")
            payload = payload[5:]

            def set_deadline(ms: int) -> None:
                ns = time.monotonic_ns() + ms * 1_000_000
                self.deadline, self.deadline_g = (
                    (deadline, deadline_g) if deadline and deadline < ns else (ns, h)
                )
                self.publish_deadline()

            # Unpickling may import the task's modules on this M (a fresh
            # one, on a loaded machine, took longer than a 0.3 s timeout and
            # the task failed wherever it ran): an import has its own, looser
            # bound, and the timeout starts again once the task is decoded.
            grace = max(ms, self.import_grace_ms)
            watch = ImportWatch(lambda: set_deadline(grace), lambda: set_deadline(ms))
            set_deadline(ms)
        started = time.monotonic()
        left = False  # out of RUNNING and the G counted (g_leave)
        try:
            status, data = run_payload(payload, watch)
            # Out of task code: leave RUNNING by CAS, so sysmon cannot count
            # us out twice; in one call when nothing happened meanwhile.
            left = not outer and not self.in_syscall and node.g_leave(self.m, MState.RUNNING, MState.IDLE)
            if not left:
                self.resync()  # the G may have ended asleep-detected: the count and the P come back
                if not outer and self.in_syscall:
                    self.exitsyscall()  # the task returned inside a gmpd.syscall() it never left
                while not outer and not node.m_cas_state(self.m, MState.RUNNING, MState.IDLE):
                    if node.m_info(self.m)[0] != MState.ASLEEP:
                        node.m_set(self.m, state=MState.IDLE)  # not sysmon's doing: nothing to give back
                        break
                    self.resync()
        finally:
            if not outer:
                node.sched_add(Counter.RUNNING, -1)
            if self.deadline != deadline:
                self.deadline, self.deadline_g = deadline, deadline_g
                self.publish_deadline()
        if not left:
            node.m_ran(self.m)
        self.last_run = time.monotonic() - started
        if parent == 0 and root_id:
            if len(data) > self.max_message:
                too_big = GmpdError(config.too_large("the task's result", len(data), self.max_message))
                status, data = wire.RAISED, error_payload(too_big)
            self.add_result(root_id, status, data, h, started)
        else:
            try:
                node.g_set_result(h, self.p, data, status)
            except MemoryError as exc:  # the child fails, the M goes on
                err = error_payload(GmpdError(f"result too large for the node's G arena: {exc}"))
                node.g_set_result(h, self.p, err, wire.RAISED)
        self.curg = outer
        if not outer:
            self.bottom = 0
        node.m_run(self.m, outer or self.chain(), -1 if outer else MState.IDLE)

    def in_task(self, call: Callable[..., T], *args: Any) -> T:
        """Run a gmpd call made by task code: it needs the P in RUNNING, so
        inside ``with gmpd.syscall()`` leave the syscall for it (the P may
        be another M's by now) and enter it again after.  (Not a context
        manager: its generator cost a gmpd.go a few µs.)  go and wait_child
        inline the common case (not in a syscall) before calling this: a
        ``call(*args)`` on their path put one more C-level eval loop under
        every nesting level of a recursion (task -> result() -> inline
        child -> ...), and nested fib ran 2x slower (0.15 -> 0.41-0.55 s in
        the bench; measured, seventh session)."""
        if not self.in_syscall and self.holder == threading.get_ident():
            self.resync()
            return call(*args)
        self.exitsyscall()
        try:
            return call(*args)
        finally:
            self.entersyscall(True)

    def go(self, payload: bytes) -> ChildFuture:
        """gmpd.go inside a task: the child goes into runnext, no socket."""
        if not self.in_syscall and self.holder == threading.get_ident():  # (in_task's common case, inline)
            return self.go_running(payload)
        return self.in_task(self.go_running, payload)

    def go_running(self, payload: bytes) -> ChildFuture:
        self.own_p()
        try:
            assert self.runq is not None
            h = self.node.g_new(self.p, payload, parent=self.curg)
            batch = self.runq.put_next(h)
            self.local_fed = True
        finally:
            self.node.m_set(self.m, state=MState.RUNNING)  # (OWNING is ours alone to leave)
        if batch is not None:
            self.spill(batch)
        self.wakep()
        return ChildFuture(self, h)

    def own_p(self) -> None:
        """Task code is about to use our P's arena and queue: enter OWNING,
        then check the P (Dekker with the coordinator's on_stalled, which
        marks a stopped M ASLEEP by CAS before it fences the P).  Stopped
        before the CAS, we find the mark and get a P the usual way
        (resync); stopped after it, on_stalled sees OWNING and kills us
        rather than let us resume into a P another M has."""
        node = self.node
        while True:
            if node.m_cas_state(self.m, MState.RUNNING, MState.OWNING):
                if self.p >= 0 and (
                    node.p_held(self.p, self.m, self.epoch)
                    # (sysmon's P half of a mark we claimed before it landed: ours, back to RUNNING)
                    or (self.marked_p() and node.exitsyscall(self.p, self.m, self.epoch))
                ):
                    if _STOP_OWNING:
                        stop_owning()
                    return
                # (Not seen: our P gone unmarked.)  Leave as from a syscall whose P was retaken.
                node.m_set(self.m, state=MState.IDLE)
                node.sched_add(Counter.RUNNING, -1)
                self.p = -1
                self.exitsyscall()
                continue
            state = node.m_info(self.m)[0]
            if state not in (MState.RUNNING, MState.ASLEEP):  # (RUNNING again: a mark undone)
                raise GmpdError(
                    f"gmpd.go or gmpd.checkpoint called in M state {MState(state).name}: from a signal"
                    " handler or a finalizer that ran inside another such call? (or a bug in gmpd)"
                )
            self.resync()  # marked ASLEEP (sysmon, or stopped past the lease): claim it, get a P

    def checkpoint(self) -> bool:
        """gmpd.checkpoint(): if sysmon flagged our P (one G ran 10 ms), give
        the P's queued Gs to the global queue, where any idle P takes them,
        and clear the flag.  The running G itself cannot move (its frame is
        in this process), so this is the cooperative half of Go's preemption."""
        return self.in_task(self.checkpoint_running)

    def checkpoint_running(self) -> bool:
        if self.p < 0 or self.runq is None or not self.node.p_ticks(self.p)[2]:
            return False
        flagged = self.p
        self.own_p()
        try:
            if self.p != flagged:
                return False  # (the flagged P went meanwhile; the one we have now was not flagged)
            assert self.runq is not None
            self.node.set_preempt(self.p, False)
            gs = self.runq.drain()
        finally:
            self.node.m_set(self.m, state=MState.RUNNING)
        if gs:
            self.spill(gs)
        self.node.sched_add(Counter.YIELDS, 1)
        return True

    def inline(self, g: int, inherit: bool, claimed: bool) -> None:
        self.depth += 1
        self.node.sched_add(Counter.INLINE, 1)
        try:
            self.execute(g, inherit, claimed)
        finally:
            self.depth -= 1

    def wait_child(self, h: int, timeout: float | None) -> tuple[int, bytes]:
        """Join-helping (ForkJoinPool's): run child h inline if it is still
        unstarted, wherever it is queued; else, while it runs elsewhere, do
        what schedule() would do with this P: run Gs of our own queue, steal
        from other Ps, take a global batch (where spilled siblings wait),
        nesting at most MAX_INLINE_DEPTH deep; park only when all are empty.

        Without the steal, a thief that took half our ring left us parked
        on its running G while our other children sat unstarted in its ring
        (measured: fanout makespan 1.25-1.3 x ideal in most runs)."""
        if not self.in_syscall and self.holder == threading.get_ident():  # (in_task's common case, inline)
            self.resync()
            return self.wait_child_running(h, timeout)
        return self.in_task(self.wait_child_running, h, timeout)

    def wait_child_running(self, h: int, timeout: float | None) -> tuple[int, bytes]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if (out := self.child_outcome(h, deadline, timeout)) is not None:
                return out
            if self.depth < MAX_INLINE_DEPTH and self.runq is not None:
                if self.node.g_claim(h):
                    self.inline(h, False, True)
                    continue
                g = self.runq.get()
                if g is not None:
                    self.inline(g, self.runq.inherit_time, False)
                    continue
                g = self.steal(True) or self.get_work(GLOBAL_BATCH, 0)
                if g and self.runq is not None:
                    self.inline(g, False, False)
                    continue
            return self.block_on_child(h, deadline, timeout)

    def child_outcome(
        self, h: int, deadline: float | None, timeout: float | None
    ) -> tuple[int, bytes] | None:
        """Child h's (status, data) if it is done; raises past the deadline."""
        out = self.node.g_result(h)
        if out is None and deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"child G {h:#x} did not finish in {timeout} s")
        return out

    def block_on_child(self, h: int, deadline: float | None, timeout: float | None) -> tuple[int, bytes]:
        """Nothing to help with: the child runs on another M.  A blocking
        call like any other: in a syscall, so sysmon retakes the P and hands
        it to another M (a recursion whose parents all wait would otherwise
        hold every P and deadlock)."""
        node = self.node
        deadlocks = node.sched()[Counter.DEADLOCK]  # only a deadlock reported later is ours
        blocked = self.entersyscall()
        if blocked:
            node.m_set(self.m, state=MState.JOIN)
            self.block(TAKE_JOIN)  # (a thread back from its own call must not wait for this join)
        try:
            while True:
                if (out := self.child_outcome(h, deadline, timeout)) is not None:
                    return out
                if node.sched()[Counter.DEADLOCK] != deadlocks:
                    raise Deadlock(
                        f"gmpd: deadlock: every M is blocked waiting on a child task and no M is left "
                        f"to run them (max_ms={node.nms - 1} Ms); raise gmpd.Executor(max_ms=...) or "
                        f"nest fewer waits"
                    )
                seen = node.m_info(self.m)[5]
                if node.g_wait_register(h, self.m):
                    continue
                node.park(self.m, seen, 0.005)
        finally:
            if blocked:
                self.exitsyscall()

    # ---- lifecycle --------------------------------------------------------

    def heartbeat(self) -> None:
        """Heartbeat thread: send results that wait behind a long G; exit if
        the node agent dies.  It sends no Renew: the coordinator renews a
        lease on this node from the native heartbeat it reads in node
        memory (start_heartbeat), so this thread has no socket of its own
        (one connection and Hello fewer per M start; a Renew every 0.25 s
        per M fewer for the coordinator to wake for)."""
        try:
            lifeline = os.pidfd_open(self.lifeline)
        except ProcessLookupError:
            os._exit(0)  # the node agent died as we started
        try:
            while not self.stopping:
                if select.select([lifeline], [], [], LATE_FLUSH_S)[0]:
                    os._exit(0)  # our node agent is gone: nobody will clean up after us
                with contextlib.suppress(zmq.ZMQError):  # (the out socket closed as we exit)
                    self.flush_late()
        finally:
            os.close(lifeline)

    def run(self) -> int:
        """The M's life; its exit status (RETIRED, or 0)."""
        global CURRENT  # noqa: PLW0603 - the one M this process is, for gmpd.go
        CURRENT = self
        self.node.m_set_placing(self.m, 0, 0)
        self.node.m_set_deadline(self.m, 0)  # before the pid: sysmon acts on a deadline with a pid
        self.node.m_set_doom(self.m, Doom.NONE)
        # A stamp before the pid: a reused slot holds the last M's, which a
        # lease pass between our Hello and the native thread's first stamp
        # would read as a stopped M.
        self.node.heartbeat(self.m)
        self.node.m_set(self.m, pid=os.getpid(), state=MState.NEW, tid=0)  # (tid 0: the main thread holds it)
        self.node.start_heartbeat(self.m, HEARTBEAT_MS)  # GIL-free: what the coordinator trusts
        self.send(wire.Hello("m", os.getpid(), self.nm.name, self.m))
        self.hb = threading.Thread(target=self.heartbeat, name="gmpd-heartbeat", daemon=True)
        self.hb.start()
        self.tasks_before = self.node.m_info(self.m)[6]  # the slot's count from an M before us
        # One standby thread from the start: a first gmpd.syscall() that
        # lasts is taken over too (one started then is not parked yet when
        # sysmon looks, and the P went to another M, often a new one).
        self.standby_ready()
        return self.hold(first=True)

    def hold(self, first: bool = False) -> int:
        """Run the M on the calling thread until it ends (the main thread
        from the start, or a standby thread that took it over); its exit
        status (RETIRED, or 0)."""
        try:
            if first:
                reply = self.call(wire.LeaseRequest(self.m, False))
                if isinstance(reply, wire.Grant) and reply.p >= 0:
                    self.adopt(reply)
            self.schedule()
            return 0
        except Shutdown:
            return 0
        except Retire:
            self.flush()
            self.node.sched_add(Counter.MEXITS, 1)
            self.node.m_set(self.m, pid=0)  # the slot is free; the node agent may reuse it
            # Results may still sit in the PUSH socket's queue: os._exit follows,
            # so wait for them (ctx.term) once the heartbeat thread is done
            # with it (a late flush).
            self.stopping = True
            if self.hb is not None:
                self.hb.join(1.0)
            self.sock.close(2000)  # Release must reach the coordinator
            with self.flush_lock:
                self.out.close(2000)
            self.ctx.term()
            return RETIRED
        finally:
            # No ctx.term() or join: the heartbeat thread may sit in select;
            # the process exits (os._exit) right after this returns.
            self.stopping = True
            self.node.m_set(self.m, state=MState.EXITING, p=-1, curg=0)
            self.sock.close(0)
            with self.flush_lock:  # (the heartbeat thread may be in a late flush)
                self.out.close(1000)  # let results already sent reach the client


_OFFER_CRASH = os.environ.get("GMPD_TEST_OFFER_CRASH", "").partition(":")
_STOP_OWNING = os.environ.get("GMPD_TEST_STOP_OWNING", "")


def stop_owning() -> None:
    """Test hook (tests/test_fault.py): with GMPD_TEST_STOP_OWNING set to a
    marker file, SIGSTOP the first M to get there inside own_p's window,
    once (it writes its pid into the marker, which it creates exclusively)."""
    try:
        fd = os.open(_STOP_OWNING, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGSTOP)


def offer_crash(step: str) -> None:
    """Test hook (tests/test_offer.py): with GMPD_TEST_OFFER_CRASH set to
    <step>:<marker file>, SIGKILL this M at that step of taking an offer,
    once (the marker says it happened)."""
    if _OFFER_CRASH[0] == step and not os.path.exists(_OFFER_CRASH[2]):
        with open(_OFFER_CRASH[2], "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)


def open_offer_fifo(results: str) -> int:
    """The offer FIFO beside the client's results socket (gmpd.offer), read
    end, non-blocking; -1 when the client is not on this node."""
    path = wire.beside_client(results, OFFER_FIFO)
    if path is None:
        return -1
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return -1


def main(
    nm: NodeMemory, m: int, *, endpoint: str, results: str, lifeline: int, spin_ms: int, hints: int = -1
) -> int:
    """Entry point of a forked M process; its exit status.  ``hints``: the
    template's import-hint pipe (gmpd.g.set_hint_pipe)."""
    if hints >= 0:
        set_hint_pipe(hints)
    # `kill -USR1 <M's pid>` prints where its threads are to its stderr (a
    # stuck M, seen from outside; a task may take the signal for itself).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return M(nm, m, endpoint=endpoint, results=results, lifeline=lifeline, spin_ms=spin_ms).run()
