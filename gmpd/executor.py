"""gmpd.Executor: a concurrent.futures.Executor on an embedded local cluster.

Constructing one execs the coordinator and the node agent (gmpd.node),
which starts GOMAXPROCS = ``max_workers`` Ms (and a new node agent takes
over if that one dies: LocalCluster.restart_node).  The client has a
send-only DEALER socket to the coordinator (shared by threads under a lock)
and one PULL socket where results from Ms and the coordinator's replies
arrive, read by the IO thread, which completes the futures.

``submit`` pickles in the caller's thread.  When nothing else is in flight
it sends the task itself, at once (a thread hand-off costs ~40 us here);
otherwise it appends to an outbox and the IO thread sends what accumulated
as one Submit frame, so a burst of submits travels in batches.

Every submitted task ends in exactly one state at its submitter: a result,
an exception (with the remote traceback as ``__cause__``), or cancelled.

Runs in: the client process (user threads and the gmpd-client IO thread).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import inspect
import itertools
import json
import math
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import PENDING, RUNNING
from typing import Any

import zmq

from gmpd import config, seal, wire
from gmpd.errors import ClusterLost, CoordinatorLost, GmpdError
from gmpd.future import LazyFuture, lazy_lock
from gmpd.g import encode_task, run_chunk
from gmpd.m import load_outcome
from gmpd.offer import OFFER_FIFO, OFFER_SLOTS
from gmpd.shm import SHM_DIR, NodeMemory, list_segments
from gmpd.stats import Statistics, snapshot

START_TIMEOUT = 30.0
NODE_RESTARTS = 5  # node agents replaced within NODE_RESTART_WINDOW before the cluster gives up
NODE_RESTART_WINDOW = 60.0
SUBMIT_BATCH = 1024  # tasks per Submit frame at most
SUBMIT_EAGER = 64  # an outbox this full is sent by the submitting thread itself
# With SUBMIT_EAGER tasks in flight (the Ms have work queued), a submit is
# not sent by the IO thread as it comes: the submitter sends each
# SUBMIT_EAGER itself, and the IO thread sends what is left once the oldest
# has waited SUBMIT_DELAY, or at once when a caller waits on a result
# (TaskFuture.result).  Woken at each submit, the IO thread took the GIL
# and sent the few tasks in the outbox: a flood of 10,000 went in 220-920
# Submits instead of 157, and cost ~12% more CPU a task in all processes
# (the coordinator's is per message).  With fewer in flight, at once.
SUBMIT_DELAY = 0.001
SUBMIT_BYTES = 8 << 20  # payload bytes per Submit frame at most (beyond one task)
# Finished (results in, for the coordinator to forget) waits for company
# while tasks are in flight: each frame costs the coordinator a wake-up
# (~70 us of CPU here, two context switches), which a 2-core farm took from
# its tasks at every result.  Until it is sent, a lost M's tasks whose
# results are in would run again: a duplicate, which the client drops.
# (0.02 s until issue 6's seventh session: 50 coordinator wake-ups in a
# 1 s farm, ~7 ms of its CPU.)  It goes at the first wake-up of the IO
# thread (a Results frame, a submit) once the oldest has waited
# FINISHED_AGE; the IO thread wakes for it alone only at FINISHED_LATE.
# (Until the twentieth session: 0.1 s, and a wake-up of its own for each,
# ~10 a second in a farm of 5 ms tasks; now none, and the coordinator
# reads ~4 a second: client and coordinator CPU 14.8 -> 12.9 ms a
# 400-task farm, medians of 18 alternated runs.)
FINISHED_AGE = 0.25  # seconds a Finished waits for company
FINISHED_LATE = 2 * FINISHED_AGE  # ...and for a wake-up of the IO thread
FINISHED_BATCH = 1024  # tids per Finished at most
DGRAM_DRAIN = 256  # Results datagrams the IO thread reads per wake-up at most

_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_active: list[weakref.ref[Executor]] = []


class LocalCluster:
    """The processes of an embedded cluster, seen from the client: the
    coordinator and the node agent, both our children."""

    def __init__(
        self,
        nprocs: int,
        lease_ttl: float,
        spin_ms: int,
        max_ms: int = 0,
        retries: int = 3,
        *,
        preload: Sequence[str] = (),
    ) -> None:
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        self.rundir = os.path.join(base, f"gmpd-{secrets.token_hex(4)}")
        self.agents: list[subprocess.Popen[bytes]] = []  # every node agent started
        self.old_nms: list[NodeMemory] = []  # lost nodes' mappings: a statistics() call may still read one
        self.nm: NodeMemory | None = None
        self.restarts: collections.deque[float] = collections.deque()  # when node agents were replaced
        self.dgram: socket.socket | None = None
        self.offer_w = -1
        try:
            self.start(
                nprocs, lease_ttl=lease_ttl, spin_ms=spin_ms, max_ms=max_ms, retries=retries, preload=preload
            )
        except BaseException:  # it failed, or Ctrl-C came while it started: nothing left behind
            self.kill()
            raise

    def start(
        self,
        nprocs: int,
        *,
        lease_ttl: float,
        spin_ms: int,
        max_ms: int,
        retries: int,
        preload: Sequence[str],
    ) -> None:
        """The sockets, the coordinator and a node agent (__init__ cleans up
        if this raises, whatever it got to)."""
        while True:  # (made here, not by tempfile.mkdtemp: a Ctrl-C as it returned would leave it)
            try:
                os.mkdir(self.rundir, 0o700)
                break
            except FileExistsError:
                self.rundir = os.path.join(os.path.dirname(self.rundir), f"gmpd-{secrets.token_hex(4)}")
        os.chmod(self.rundir, 0o700)  # (whatever the umask)
        self.endpoint = f"ipc://{self.rundir}/coord"
        # Ms push results straight here; bound before any M can connect.
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.results = self.ctx.socket(zmq.PULL)
        self.results.setsockopt(zmq.LINGER, 0)
        self.results.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes())
        self.results_endpoint = f"ipc://{self.rundir}/client"
        try:
            self.results.bind(self.results_endpoint)
        except zmq.ZMQError as exc:
            raise GmpdError(
                f"cannot bind the client's socket in {self.rundir} ({exc}): a Unix socket path holds at "
                f"most 107 bytes; set XDG_RUNTIME_DIR (or TMPDIR) to a shorter directory"
            ) from exc
        # ...and on this node as datagrams, beside it (wire.RESULTS_DGRAM);
        # without it (it cannot be bound) every result comes by ZeroMQ.
        self.dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.dgram.bind(os.path.join(self.rundir, wire.RESULTS_DGRAM))
            self.dgram.setblocking(False)
        except OSError:
            self.dgram.close()
            self.dgram = None
        # A byte written here wakes spinning Ms for an offered task (gmpd.offer).
        if config.load()["client"]["offers"]:
            os.mkfifo(os.path.join(self.rundir, OFFER_FIFO), 0o600)
            self.offer_w = os.open(os.path.join(self.rundir, OFFER_FIFO), os.O_RDWR | os.O_NONBLOCK)
        coord = [sys.executable, "-m", "gmpd.coordinator", self.rundir, str(nprocs), str(os.getpid())]
        self.coord_proc = subprocess.Popen([*coord, str(lease_ttl), str(retries)], stdin=subprocess.DEVNULL)
        self.coordinator = self.coord_proc.pid
        self.node_cmd = [sys.executable, "-m", "gmpd.node", self.rundir, str(nprocs), str(os.getpid())]
        self.node_cmd += [os.getcwd(), json.dumps([p for p in sys.path if isinstance(p, str)])]
        self.node_cmd += [str(spin_ms), str(max_ms), json.dumps(list(preload))]
        self.start_node()

    def start_node(self) -> None:
        """Exec a node agent and wait until its Ms can start (it prints
        "ready <segment>" once the coordinator took it)."""
        self.proc = subprocess.Popen(self.node_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.agents.append(self.proc)
        assert self.proc.stdout is not None
        line = []
        in_time = bool(select.select([self.proc.stdout], [], [], START_TIMEOUT)[0])
        if in_time:
            line = self.proc.stdout.readline().decode().split()
        if not line or line[0] != "ready":
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            status = self.proc.wait()
            self.proc.stdout.close()
            raise GmpdError(
                f"the gmpd node agent failed to start (exit status {status})"
                if in_time
                else f"the gmpd node agent did not start within {START_TIMEOUT:.0f} s"
            )
        self.node_name = line[1]
        if self.nm is not None:
            self.old_nms.append(self.nm)
        self.nm = NodeMemory.attach(self.node_name)  # read-only use: statistics

    def restart_node(self) -> None:
        """The node agent died: its Ms went with it, the coordinator queued
        their tasks again; start a new node for them.  Raises ClusterLost
        past NODE_RESTARTS within NODE_RESTART_WINDOW seconds."""
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.unlink_nodes()
        if self.coord_proc.poll() is not None:  # it went first, and the agent with it
            raise self.coordinator_lost()
        while True:
            now = time.monotonic()
            while self.restarts and now - self.restarts[0] > NODE_RESTART_WINDOW:
                self.restarts.popleft()
            if len(self.restarts) >= NODE_RESTARTS:
                raise ClusterLost(
                    f"the gmpd node agent died {NODE_RESTARTS + 1} times within {NODE_RESTART_WINDOW:.0f} s "
                    f"(last exit status {self.proc.returncode}); the cluster gave up: create a new "
                    f"gmpd.Executor"
                )
            self.restarts.append(now)
            try:
                self.start_node()
                return
            except GmpdError:
                self.unlink_nodes()  # (it died starting: try again, within the budget)

    def coordinator_lost(self) -> CoordinatorLost:
        return CoordinatorLost(
            f"the gmpd coordinator (pid {self.coordinator}) died; the tasks still outstanding "
            f"cannot finish: create a new gmpd.Executor and submit them again"
        )

    def wait(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in (self.coord_proc, self.proc):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.cleanup()

    def kill(self) -> None:
        """Startup failed: kill both processes, drop our sockets and files
        (whichever it got to)."""
        for proc in (getattr(self, "coord_proc", None), getattr(self, "proc", None)):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if (results := getattr(self, "results", None)) is not None:
            results.close(0)
        if (ctx := getattr(self, "ctx", None)) is not None:
            # A Ctrl-C inside pyzmq's making of a socket can leave one the
            # context does not list, and term() then waits for it forever:
            # a second at most, then the context is left to the process.
            ending = threading.Thread(target=ctx.destroy, args=(0,), name="gmpd-ctx-term", daemon=True)
            ending.start()
            ending.join(1.0)
        self.cleanup()

    def unlink_nodes(self) -> None:
        """The node agent unlinks its segments; if it was SIGKILLed, we do:
        those of every agent that has ended (each name carries its creator's
        pid, so an agent killed before it said their names is covered)."""
        ended = {str(proc.pid) for proc in self.agents if proc.returncode is not None}
        for name in list_segments():
            if name.split("-")[2] in ended:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(SHM_DIR / name)

    def cleanup(self) -> None:
        for nm in [*self.old_nms, self.nm]:
            if nm is not None:
                nm.close()
        self.old_nms, self.nm = [], None
        self.unlink_nodes()
        proc = getattr(self, "proc", None)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self.offer_w >= 0:
            os.close(self.offer_w)
            self.offer_w = -1
        if self.dgram is not None:
            self.dgram.close()
        shutil.rmtree(self.rundir, ignore_errors=True)


MIN_LEASE_TTL = 0.2  # seconds: four of the Ms' 50 ms heartbeats
CANCEL_TIMEOUT = 10.0  # seconds cancel() waits for the coordinator's verdict
RUNNING_WAIT = 1.0  # seconds the first running() waits for the coordinator's answer (Watching)
LANE_WAIT = 0.05  # a thread waiting on an offered task's slot re-checks its future this often


class TaskFuture(LazyFuture):
    """The future of a task submitted from this client.

    ``cancel()`` asks the coordinator and waits for its answer (a round
    trip, ~0.2 ms): True means no M took the task and none ever will.  The
    client alone cannot know, since an M may have taken it a moment ago.
    The first ``running()`` on a pending future of a client is such a
    round trip too (Watch): until then the coordinator tells the client
    nothing about tasks Ms take (``Started``), from then on it does.

    Its Condition is made only when something waits, looks or adds a
    callback (gmpd.future); a result that comes first is set without one,
    and read without one: the standard ``wait``/``as_completed``, which use
    the Condition, work unchanged."""

    def __init__(self, io: _ClientIO, tid: int) -> None:
        super().__init__()
        self._io, self._tid = io, tid
        self._lane = -1  # the offer slot its result may come back in (gmpd.offer), -1: none

    def describe(self) -> str:
        return f"task {self._tid}"

    def mark_running(self) -> None:
        """The coordinator says an M has the task (again, when retried)."""
        with lazy_lock():
            if self._cond is None:  # nobody looked: no Condition to make for it
                if self._state == PENDING:
                    self._state = RUNNING
                return
        if not self.done() and self._state != RUNNING:
            self.set_running_or_notify_cancel()

    def _unhold(self) -> None:
        """A caller waits on us: a burst's last tasks in the outbox go now
        (the IO thread would leave them SUBMIT_DELAY for company)."""
        if self._state == PENDING and self._io.outbox:
            self._io.pump_out()

    def result(self, timeout: float | None = None) -> Any:
        self._unhold()
        if self._lane >= 0 and self._state in (PENDING, RUNNING):
            # Offered: the M writes the result into node memory and wakes us
            # (the IO thread's copy, by ZeroMQ, comes after).
            deadline = None if timeout is None else time.monotonic() + timeout
            self._io.wait_lane(self, deadline)
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._unhold()
        return super().exception(timeout)

    def running(self) -> bool:
        """Whether an M has the task.  The first call on a client's pending
        future asks the coordinator (Watch, a round trip) and has it send
        Started from then on; until then none is sent."""
        if self._state == PENDING and not self._io.watched.is_set():
            self._io.watch_started()
        return self._state == RUNNING

    def cancel(self) -> bool:
        if self.done() or self._state == RUNNING:
            return self.cancelled()
        self._io.cancel_tasks([self._tid])  # the IO thread cancels us if it was withdrawn
        return self.cancelled()

    def cancel_withdrawn(self) -> None:
        """The coordinator withdrew this task: the future becomes cancelled,
        and notified (CANCELLED_AND_NOTIFIED), as an executor does after a
        cancel, so that wait() and as_completed() count it as done."""
        super().cancel()
        self.set_running_or_notify_cancel()


class _CancelWait:
    """One Cancel request waiting for its Cancelled answer."""

    def __init__(self, tids: list[int]) -> None:
        self.left = set(tids)
        self.withdrawn: set[int] = set()
        self.answered = threading.Event()


class _ClientIO(threading.Thread):
    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(name="gmpd-client", daemon=True)
        self.cluster = cluster
        self.agent = -1  # pidfd of the node agent (a new one after a restart)
        self.ctx = cluster.ctx
        self.sock = self.ctx.socket(zmq.DEALER)  # send-only, under send_lock
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(cluster.endpoint)
        self.send_lock = threading.Lock()
        self.outbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self.options: dict[int, list[int]] = {}  # tid -> [tid, retries, timeout_ms], not sent yet
        self.cancel_waits: dict[int, list[_CancelWait]] = {}  # tid -> the requests waiting on it
        self.futures: dict[int, TaskFuture] = {}
        self.cancel_lock = threading.Lock()
        self.tids = itertools.count(1)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.closing = False
        self.kicked = False  # a wake-up byte is in the pipe (cleared before draining)
        self.defer_until = 0.0  # the IO thread leaves the outbox to a burst's submitter until then
        self.done = threading.Event()
        self.lost: BaseException | None = None  # why the cluster is gone (fail_all), if it is
        self.submitted = self.completed = self.duplicates = 0
        self.dgrams = 0  # Results frames that came as datagrams
        self.received: list[int] = []  # tids of results in, to tell the coordinator (Finished)
        # Offer slots (gmpd.offer): each one's last task, whose result may
        # still come back there; the node memory they are in.
        self.lanes: list[TaskFuture | None] = [None] * OFFER_SLOTS
        self.lane_nm: NodeMemory | None = None
        self.lane_done: set[int] = set()  # tids finished from node memory: their ZeroMQ copy is no duplicate
        self.lane_lock = threading.Lock()
        self.lane_completed = 0  # futures finished from node memory (by user threads)
        self.received_since = 0.0  # when the oldest of them came in
        self.watch_sent = False  # we asked the coordinator for Started (Watch)
        self.watched = threading.Event()  # its answer (Watching) came, or never will
        self.started_msgs = 0  # Started messages received
        # Before any Submit can be sent: the coordinator drops those of strangers.
        self.send(wire.Hello("client", os.getpid(), "", -1, cluster.results_endpoint))

    # -- called from user threads --
    def submit(self, payload: bytes, options: tuple[int, int] | None = None) -> TaskFuture:
        """``options``: (retries, timeout_ms) when they differ from the cluster's."""
        tid = next(self.tids)
        fut = TaskFuture(self, tid)
        if self.lost is not None or self.done.is_set():  # the cluster is gone: nothing will ever answer
            fut.set_running_or_notify_cancel()
            fut.set_exception(self.lost or ClusterLost("the gmpd cluster has shut down"))
            return fut
        self.submitted += 1
        self.futures[tid] = fut
        if options is not None:
            self.options[tid] = [tid, *options]
        if len(self.futures) == 1 and not self.outbox:  # alone in flight: no batch to wait for
            self.send_alone(fut, payload)
            return fut
        first = not self.outbox
        self.outbox.append((tid, payload))
        if len(self.outbox) >= SUBMIT_EAGER:
            # A busy submitter keeps the GIL for up to the switch interval
            # (5 ms): do not leave the batch waiting for the IO thread.
            self.pump_out()
        elif len(self.futures) <= SUBMIT_EAGER:
            self.defer_until = 0.0
            self.kick()
        elif first:  # many in flight: the IO thread sends what we leave (SUBMIT_DELAY)
            self.defer_until = time.monotonic() + SUBMIT_DELAY
            self.kick()
        return fut

    def cancel_tasks(self, tids: list[int]) -> set[int]:
        """Ask the coordinator to withdraw ``tids`` and wait for its answer;
        the IO thread cancels the futures of those withdrawn, which this
        returns.  From the IO thread itself (a done-callback cancelling a
        future) the answer could never be read: nothing is withdrawn then."""
        if not tids or threading.current_thread() is self or self.done.is_set():
            return set()
        wait = _CancelWait(tids)
        with self.cancel_lock:
            for tid in tids:
                self.cancel_waits.setdefault(tid, []).append(wait)
        self.pump_out()  # a task still in the outbox reaches the coordinator before its Cancel
        self.send(wire.Cancel(tids))
        if not wait.answered.wait(CANCEL_TIMEOUT):
            with self.cancel_lock:
                for tid in tids:
                    waits = self.cancel_waits.get(tid, [])
                    if wait in waits:
                        waits.remove(wait)
                    if not waits:
                        self.cancel_waits.pop(tid, None)
        return wait.withdrawn

    def watch_started(self) -> None:
        """Ask the coordinator, once, to say which tasks Ms take (Watch),
        and wait for its answer: from then on Started messages keep
        ``running()`` current.  Until user code asks, none is sent (one
        per global batch cost a farm ~0.25% of its CPU).  From the IO
        thread itself (a done-callback) the answer could never be read:
        the question goes, and the state is what it is."""
        with self.send_lock:
            first = not self.watch_sent
            self.watch_sent = True
        if first:
            try:
                self.send(wire.Watch())
            except zmq.ZMQError:  # the client is closing: no answer will come
                self.watched.set()
        if threading.current_thread() is not self:
            self.watched.wait(RUNNING_WAIT)
        # An answer lost (a coordinator that stopped reading us drops it) or
        # late holds up this call only: Started comes if the Watch got through.
        self.watched.set()

    def kick(self) -> None:
        """Wake the IO thread, unless a wake-up is already pending."""
        if not self.kicked:
            self.kicked = True
            with contextlib.suppress(BlockingIOError):
                os.write(self.wake_w, b"\0")

    def close(self) -> None:
        self.closing = True
        self.kick()

    def send_alone(self, fut: TaskFuture, payload: bytes) -> None:
        """A task alone in flight: offered in node memory to a spinning M
        (gmpd.offer), which starts it before the coordinator reads the
        Submit, sent too, and writes its result back there (wait_lane).
        Under the send lock, so that no Finished for it (sent after its
        result came) can overtake the Submit."""
        tid = fut._tid
        task = [(tid, payload)]
        options, offers = self.take_options(task), []
        cluster = self.cluster
        with self.send_lock:
            nm = cluster.nm
            if cluster.offer_w >= 0 and nm is not None:
                if nm is not self.lane_nm:  # (a new node: new slots)
                    self.lanes, self.lane_nm = [None] * OFFER_SLOTS, nm
                free = sum(1 << i for i, f in enumerate(self.lanes) if f is None or f.done())
                offered = nm.node.offer_put(tid, payload, free) if free else None
                if offered is not None:
                    self.lanes[offered[0]] = fut
                    fut._lane = offered[0]
                    offers = [[tid, *offered, nm.node.creator_pid]]
            self.sock.send(wire.encode(wire.Submit(task, options, offers)), copy=False)
            if fut._lane >= 0:
                # The wake last: on 2 cores the woken M would take this
                # thread's CPU before the Submit was out (measured: the
                # send then ended ~130 us later, after the task had run).
                with contextlib.suppress(BlockingIOError):
                    os.write(cluster.offer_w, b"\0")

    def wait_lane(self, fut: TaskFuture, deadline: float | None) -> None:
        """Wait (a futex in node memory, without the GIL) until offered
        ``fut`` is done or its result is in its slot, and finish it then;
        or until ``deadline``.  The IO thread pokes the slot when it
        finishes the future itself (a result too large for the slot, a
        retry on another node, a lost cluster)."""
        nm, slot, tid = self.lane_nm, fut._lane, fut._tid
        if nm is None:
            return
        node = nm.node
        try:
            while not fut.done():
                seen = node.offer_wake(slot)
                got = node.offer_result(slot, tid)
                if got is not None:
                    self.finish_lane(fut, *got)
                    return
                wait = LANE_WAIT if deadline is None else min(LANE_WAIT, deadline - time.monotonic())
                if wait <= 0 or fut.done():
                    return
                node.offer_wait(slot, seen, wait)
        except (ValueError, OSError):  # the cluster closed the node's memory meanwhile
            return

    def poke(self, fut: TaskFuture) -> None:
        """Wake a thread waiting on offered ``fut``'s slot (wait_lane): we
        finished the future."""
        nm = self.lane_nm
        if nm is not None:
            with contextlib.suppress(ValueError, OSError):
                nm.node.offer_poke(fut._lane)

    def finish_lane(self, fut: TaskFuture, status: int, data: bytes) -> None:
        """Finish ``fut`` with the result its M wrote into node memory,
        unless the IO thread has it (the future is then its to finish)."""
        self.lane_done.add(fut._tid)  # (first: the IO thread may read the ZeroMQ copy any time now)
        if self.futures.pop(fut._tid, None) is not fut:
            self.lane_done.discard(fut._tid)
            return
        ok, value = load_outcome(status, data)
        try:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        except InvalidStateError:  # (cancelled by a user thread meanwhile)
            return
        with self.lane_lock:  # (user threads: the IO thread alone counts ``completed``)
            self.lane_completed += 1

    def send(self, msg: wire.Message) -> None:
        frame = wire.encode(msg)
        with self.send_lock:
            self.sock.send(frame, copy=False)

    # -- the IO thread --

    def pump_out(self) -> None:
        """Send what the outbox holds (from the IO thread or a submitter).
        Under the send lock, so that whatever was in the outbox when a
        thread calls this is on the socket when it returns."""
        with self.send_lock:
            while self.outbox:
                batch: list[tuple[int, bytes]] = []
                size = 0  # a frame stays under the peers' size limit (one task alone always fits)
                with contextlib.suppress(IndexError):  # another thread took the last ones
                    while len(batch) < SUBMIT_BATCH and (
                        not batch or size + len(self.outbox[0][1]) < SUBMIT_BYTES
                    ):
                        batch.append(self.outbox.popleft())
                        size += len(batch[-1][1])
                if batch:
                    self.sock.send(wire.encode(wire.Submit(batch, self.take_options(batch))), copy=False)

    def take_options(self, batch: list[tuple[int, bytes]]) -> list[list[int]]:
        if not self.options:
            return []
        return [opt for tid, _payload in batch if (opt := self.options.pop(tid, None)) is not None]

    def on_message(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.Started | wire.Watching):
            for tid in msg.tids:
                fut = self.futures.get(tid)
                if fut is not None:
                    fut.mark_running()
            if isinstance(msg, wire.Watching):
                self.watched.set()
            else:
                self.started_msgs += 1
        elif isinstance(msg, wire.Results):
            pop = self.futures.pop
            if not self.received:
                self.received_since = time.monotonic()
            self.received += [tid for tid, _status, _data in msg.results]
            for tid, status, data in msg.results:  # the hot loop of the client: ~2 us a result
                fut = pop(tid, None)
                if fut is None:
                    if tid in self.lane_done:  # finished from node memory already
                        self.lane_done.discard(tid)
                    else:
                        self.duplicates += 1  # (or a result for a future cancelled meanwhile)
                    continue
                ok, value = load_outcome(status, data)
                try:  # raises if a user thread cancelled it while its result was on the way
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
                except InvalidStateError:
                    continue
                finally:
                    if fut._lane >= 0:
                        self.poke(fut)
                self.completed += 1
        elif isinstance(msg, wire.Cancelled):
            for tid in msg.tids:  # even if the canceller stopped waiting
                fut = self.futures.pop(tid, None)
                if fut is not None:
                    fut.cancel_withdrawn()
            withdrawn = set(msg.tids)
            with self.cancel_lock:
                for tid in msg.tids + msg.refused:
                    waits = self.cancel_waits.get(tid, [])
                    # The oldest request asking about tid gets this answer.
                    wait = waits.pop(0) if waits else None
                    if not waits:
                        self.cancel_waits.pop(tid, None)
                    if wait is None:
                        continue
                    wait.left.discard(tid)
                    if tid in withdrawn:
                        wait.withdrawn.add(tid)
                    if not wait.left:
                        wait.answered.set()

    def fail_all(self, exc: BaseException) -> None:
        self.lost = exc
        self.watched.set()  # (a running() waiting for Watching)
        # Newest first: a caller waits on its futures in submission order,
        # and the one it waits on, failed last, wakes it when all are done
        # (with lazy Conditions the loop got fast enough for a woken caller
        # to see later futures still pending).
        for fut in reversed(list(self.futures.values())):
            if not fut.done() and (fut._state == RUNNING or fut.set_running_or_notify_cancel()):
                fut.set_exception(exc)
        self.futures.clear()
        with self.cancel_lock:  # no answer will come: release the cancellers
            for waits in self.cancel_waits.values():
                for wait in waits:
                    wait.answered.set()
            self.cancel_waits.clear()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.cluster.results, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        dgram = self.cluster.dgram.fileno() if self.cluster.dgram is not None else -1
        if dgram >= 0:
            poller.register(dgram, zmq.POLLIN)
        coordinator = -1
        try:
            self.agent = os.pidfd_open(self.cluster.proc.pid)
            poller.register(self.agent, zmq.POLLIN)
            coordinator = os.pidfd_open(self.cluster.coordinator)
            poller.register(coordinator, zmq.POLLIN)
            self.loop(poller, coordinator, dgram)
        except ProcessLookupError:  # it died (and was reaped) before we watched it
            self.fail_all(CoordinatorLost("the gmpd cluster exited as it started"))
        except BaseException as exc:  # a bug here must not leave futures hanging
            self.fail_all(GmpdError(f"the gmpd client thread failed ({exc!r}); this is a bug in gmpd"))
            raise
        finally:
            self.watched.set()  # a running() waiting for Watching: none will come now
            with contextlib.suppress(zmq.ZMQError):
                self.send(wire.Bye("client shutdown"))
            with self.send_lock:
                self.sock.close(1000)
            self.cluster.results.close(0)
            self.ctx.term()
            for fd in (self.agent, coordinator):
                if fd >= 0:
                    os.close(fd)
            self.cluster.wait()
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.done.set()

    def loop(self, poller: zmq.Poller, coordinator: int, dgram: int) -> None:
        while True:
            due = self.outbox_due()
            if due == 0:
                self.pump_out()
            if self.closing and not self.futures and not self.outbox:
                return
            wait = self.finished_due()
            events = dict(poller.poll(wait if not due else min(wait, due)))
            if self.wake_r in events:
                self.kicked = False  # before draining: a later submit writes again
                os.read(self.wake_r, 65536)
            if coordinator in events:
                self.fail_all(self.cluster.coordinator_lost())
                return
            if self.agent in events:  # the node agent died: the coordinator queued its tasks again
                poller.unregister(self.agent)
                os.close(self.agent)
                self.agent = -1
                try:
                    self.cluster.restart_node()
                except ClusterLost as exc:
                    self.fail_all(exc)
                    return
                self.agent = os.pidfd_open(self.cluster.proc.pid)
                poller.register(self.agent, zmq.POLLIN)
            if dgram in events:
                self.drain_dgrams()
            polled = self.cluster.results in events
            for n in itertools.count():
                if not wire.drain_more(self.cluster.results, n, polled):
                    break
                try:
                    frame = self.cluster.results.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                with contextlib.suppress(wire.WireError):
                    self.on_message(wire.decode(frame))
            self.send_finished()

    def drain_dgrams(self) -> None:
        """The Results datagrams waiting (Ms on this node send them so), up
        to DGRAM_DRAIN: the loop's other work (the outbox, Finished, the
        ZeroMQ socket) comes between, and the poll returns at once for the
        rest.  Only Results count: anything else is dropped."""
        assert self.cluster.dgram is not None
        recv = self.cluster.dgram.recv
        for _ in range(DGRAM_DRAIN):
            try:
                frame = recv(wire.DGRAM_MAX + 1)
            except BlockingIOError:
                return
            self.dgrams += 1
            with contextlib.suppress(wire.WireError):
                msg = wire.decode(frame)
                if isinstance(msg, wire.Results):
                    self.on_message(msg)

    def outbox_due(self) -> int | None:
        """Milliseconds before the outbox is ours to send (0: now); None
        when it is empty."""
        if not self.outbox:
            return None
        left = self.defer_until - time.monotonic()
        return 0 if left <= 0 or self.closing else math.ceil(left * 1000)

    def finished_due(self) -> int:
        """Milliseconds the loop may sleep: until a waiting Finished is late."""
        if not self.received:
            return 1000
        return max(0, math.ceil((self.received_since + FINISHED_LATE - time.monotonic()) * 1000))

    def send_finished(self) -> None:
        """Tell the coordinator which results are in (it forgets those tasks;
        until then it would run them again if their M were lost), batched
        while other tasks are in flight."""
        if not self.received:
            return
        if (
            self.futures
            and not self.closing
            and len(self.received) < FINISHED_BATCH
            and time.monotonic() - self.received_since < FINISHED_AGE
        ):
            return
        self.send(wire.Finished(self.received))
        self.received = []


def _chunks(iterables: tuple[Iterable[Any], ...], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` argument tuples, or of bare items when map() got one
    iterable: half the objects to build, pickle and collect."""
    it: Iterator[Any] = iter(iterables[0]) if len(iterables) == 1 else zip(*iterables, strict=False)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class Executor(_BaseExecutor):
    """A concurrent.futures.Executor whose workers are gmpd Ms.

    ``max_workers`` is GOMAXPROCS, the number of Ps (default: the CPU count).
    ``max_ms`` bounds the Ms (worker processes), which grow past GOMAXPROCS
    while Ms block in syscalls or joins (default: 8 per P).  ``retries``: how
    many times a task runs again after the M running it died (killed, crashed,
    ``os._exit``) before its future raises :class:`gmpd.WorkerLost`.
    ``task_timeout`` (seconds, default none): a task still running after it
    has its M killed and replaced (sysmon enforces it), and its future raises
    :class:`gmpd.TaskTimeout`, or with ``retry_timeouts`` the task runs again
    within its retry budget.  Per task: ``executor.options(retries=...,
    timeout=..., retry_timeouts=...).submit(...)``.  ``preload``: modules
    every M has imported before its first task (as multiprocessing's
    forkserver preload); without it, Ms started later still come with the
    modules earlier Ms had to import to decode their tasks.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        lease_ttl: float | None = None,
        spin_ms: int = 2,
        max_ms: int = 0,
        retries: int = 3,
        task_timeout: float | None = None,
        retry_timeouts: bool = False,
        preload: Sequence[str] = (),
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        _check_retries(retries)
        if task_timeout is not None:
            _check_timeout(task_timeout)
        self._retries, self._task_timeout, self._retry_timeouts = retries, task_timeout, retry_timeouts
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._shutdown = False
        if max_ms and max_ms <= max_workers:
            raise ValueError(f"max_ms must exceed max_workers ({max_workers}): Ms in syscalls hold no P")
        conf = config.load()
        if lease_ttl is None:
            lease_ttl = conf["coordinator"]["lease_ttl_ms"] / 1000
        if not lease_ttl >= MIN_LEASE_TTL:
            raise ValueError(
                f"lease_ttl={lease_ttl!r} s is too short: an M's heartbeat beats every 50 ms, so a lease "
                f"under {MIN_LEASE_TTL} s would fence healthy Ms; use at least {MIN_LEASE_TTL}"
            )
        self._max_message = conf["wire"]["max_message_mb"] << 20
        if isinstance(preload, str):
            raise TypeError("preload takes a list of module names, not a string")
        self._cluster = LocalCluster(max_workers, lease_ttl, spin_ms, max_ms, retries, preload=preload)
        try:
            self._io = _ClientIO(self._cluster)
            self._io.start()
        except BaseException:  # (Ctrl-C right after the start: nothing left behind)
            self._cluster.kill()
            raise
        _live.add(self)
        _active.append(weakref.ref(self))

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """As ``concurrent.futures.Executor.submit``.  ``timeout=seconds`` is
        the task's timeout (gmpd.TaskTimeout) when ``fn`` takes no argument
        of that name (nor ``**kwargs``); else it is passed to ``fn``.  Use
        ``options(timeout=...)`` to say it either way."""
        if "timeout" in kwargs and not _takes_timeout(fn):
            kwargs = dict(kwargs)
            timeout = kwargs.pop("timeout")
            return self.options(timeout=timeout).submit(fn, *args, **kwargs)
        return self._submit(None, fn, args, kwargs)

    def options(
        self, *, retries: int | None = None, timeout: float | None = None, retry_timeouts: bool | None = None
    ) -> TaskOptions:
        """Submit with other options than this executor's defaults:
        ``ex.options(retries=0, timeout=2.5).submit(fn, x)`` (gmpd's own
        keywords never mix with the task's keyword arguments)."""
        if retries is not None:
            _check_retries(retries)
        if timeout is not None:
            _check_timeout(timeout)
        return TaskOptions(
            self,
            self._retries if retries is None else retries,
            self._task_timeout if timeout is None else timeout,
            self._retry_timeouts if retry_timeouts is None else retry_timeouts,
        )

    def _submit(
        self,
        options: TaskOptions | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            try:
                payload = encode_task(fn, args, kwargs)
                timeout = self._task_timeout if options is None else options.timeout
                if timeout is not None:
                    retry = self._retry_timeouts if options is None else options.retry_timeouts
                    # Read by the M: it publishes the deadline that sysmon enforces.
                    ms = max(1, round(timeout * 1000)).to_bytes(4, "little")
                    payload = (b"t" if retry else b"T") + ms + payload
                if len(payload) > self._max_message:
                    raise ValueError(config.too_large("the task", len(payload), self._max_message))
            except Exception as exc:
                fut: Future[Any] = Future()
                fut.set_running_or_notify_cancel()
                fut.set_exception(exc)
                return fut
            return self._io.submit(payload, None if options is None else (options.retries, 0))

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            fs = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
        else:
            star = len(iterables) != 1
            files = seal.code_files(fn) or None  # (fn goes as an argument: its files with it)
            fs = [self.submit(run_chunk, fn, chunk, star, files) for chunk in _chunks(iterables, chunksize)]
        return self._map_results(fs, end, chunksize > 1)

    def _map_results(self, fs: list[Future[Any]], end: float | None, chunked: bool) -> Iterator[Any]:
        """The stdlib's map iterator, except that leaving it early (timeout,
        error, break) cancels what is left with one Cancel, not one round
        trip per future."""
        fs.reverse()
        try:
            while fs:
                fut = fs.pop()
                value = fut.result() if end is None else fut.result(end - time.monotonic())
                if chunked:
                    yield from value
                else:
                    yield value
        finally:
            left = [f._tid for f in fs if isinstance(f, TaskFuture) and not f.done()]
            self._io.cancel_tasks(left)

    def statistics(self) -> Statistics:
        """A frozen snapshot of Ps, Ms and the scheduler counters."""
        nm = self._cluster.nm
        if nm is None:
            raise RuntimeError("statistics() after the cluster has shut down")
        io = self._io
        return snapshot(nm, io.submitted, io.completed + io.lane_completed, io.duplicates)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        if cancel_futures:  # one Cancel for all, one round trip
            pending = [f for f in list(self._io.futures.values()) if not f.done() and f._state != RUNNING]
            self._io.cancel_tasks([f._tid for f in pending])
        self._io.close()
        if wait:
            self._io.done.wait()
        _live.discard(self)


class TaskOptions:
    """An executor's submit with per-task options (``Executor.options``)."""

    def __init__(self, executor: Executor, retries: int, timeout: float | None, retry_timeouts: bool) -> None:
        self._executor = executor
        self.retries, self.timeout, self.retry_timeouts = retries, timeout, retry_timeouts

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._executor._submit(self, fn, args, kwargs)


def _takes_timeout(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts a ``timeout`` keyword (False when Python
    cannot tell, as for many builtins)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "timeout" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _check_timeout(timeout: float) -> None:
    if not isinstance(timeout, int | float) or not 0 < timeout < 2**31 / 1000:
        raise ValueError(f"a task timeout is a number of seconds > 0, got {timeout!r}")


def _check_retries(retries: int) -> None:
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")


def active_executor() -> Executor | None:
    """The most recently created Executor that is not shut down."""
    while _active:
        ex = _active[-1]()
        if ex is not None and not ex._shutdown:
            return ex
        _active.pop()
    return None


@atexit.register
def _python_exit() -> None:
    for ex in list(_live):
        ex.shutdown(wait=True)
