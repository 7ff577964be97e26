"""The node agent: creates node shared memory and starts every other process.

Embedded mode (``gmpd.Executor()``): the client execs the coordinator and
one ``python -m gmpd.node`` (the node agent), which never creates a ZeroMQ
context, so it can fork safely.  Process tree and who watches whom::

    client ──exec──> coordinator       exits when the client dies
       └───exec──> node agent (setsid; owns the node segments)
                       ├─fork─> sysmon            started again if it dies
                       └─fork─> template          fork server, Go's templateThread
                                  └─fork─> M0..Mk  exit when the node agent dies

The node agent reaches the coordinator over a unix socket in the run
directory (coordinator.py, "the node and its agent"): it names its node
memory, reports M exits and starts Ms when asked.  If the agent dies, the
coordinator outlives it and runs the lost node's tasks again on the next
node, which the client starts (executor.py, LocalCluster.restart_node).

The template is forked before anything holds a socket and exists only to
fork Ms from that clean state ("spawn <m>" on its command pipe; it reports
"pid <m> <pid>" and "exit <m> <pid> <status>" back).  Ms inherit the node
mapping.  The node agent exits when the client dies, or when its link to
the coordinator closes (shutdown), after killing what is left and
unlinking the segments, so nothing outlives the cluster.

Runs in: the node agent process (and, after fork, the template).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

from gmpd import (
    api,  # noqa: F401  (for the template's Ms: gmpd.syscall, gmpd.go ready in each)
    config,
    m,
    sysmon,
)
from gmpd.sched import Counter
from gmpd.shm import NodeMemory

GRACE = 2.0  # seconds a process gets to exit by itself at shutdown
LINK_TIMEOUT = 30.0  # seconds to reach the coordinator
# Ms get this long to exit by themselves once the node stops, then are
# killed.  Those the coordinator said Bye to take milliseconds; one it
# never knew (still starting) would wait for a reply that never comes.
# Nothing is lost: the client says Bye only when no future is pending, and
# if the agent died the coordinator runs every started root again anyway.
M_GRACE = 0.05


def fork(fn: Callable[[], object], close: tuple[int, ...] = ()) -> int:
    """Run ``fn`` in a forked child that never returns into our code; the
    child exits with what ``fn`` returns if that is an int, else 0."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child side; its effects are tested
        code = 0
        try:
            for fd in close:
                os.close(fd)
            result = fn()
            code = result if isinstance(result, int) else 0
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


class Preload:
    """The template's side of gmpd.g's import hints: import each named
    module once, right before the next fork (not when the hint comes: an
    import can take 100s of ms, and meanwhile the template would reap and
    report no M's death).  A module that fails to import is
    skipped.  If an import left the template with more than one thread
    (a library that starts threads when imported), forking it is no longer
    safe for what those threads hold: it says so once and imports nothing
    more (what it already has, it keeps: CPython's own fork start method
    forks such a process too)."""

    def __init__(self) -> None:
        self.buf = b""
        self.pending: list[str] = []
        self.off = False

    def read(self, fd: int) -> None:
        """Take the hints in; they are imported by ``load_pending``."""
        try:
            while data := os.read(fd, 65536):
                self.buf += data
        except BlockingIOError:
            pass
        lines, _, self.buf = self.buf.rpartition(b"\n")
        self.pending += lines.decode(errors="replace").split()

    def load_pending(self, fd: int) -> None:
        self.read(fd)
        names, self.pending = self.pending, []
        self.load(names)

    def load(self, names: list[str], *, asked: bool = False) -> None:
        """Import ``names``; ``asked`` (Executor(preload=)): say on stderr
        when one fails, as it is the user's list, not a hint."""
        for name in names:
            if self.off or name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except BaseException as exc:  # (SystemExit from a module too: it is only a preload)
                if asked:
                    print(f"gmpd: Executor(preload=): importing {name} failed: {exc!r}", file=sys.stderr)
                continue
            if len(os.listdir("/proc/self/task")) > 1:
                self.off = True
                print(
                    f"gmpd: importing {name} started a thread in the M template; "
                    "it preloads no more modules for new Ms",
                    file=sys.stderr,
                )


def template(
    nm: NodeMemory,
    cmd: int,
    report: int,
    *,
    endpoint: str,
    results: str,
    lifeline: int,
    spin_ms: int,
    preload_names: list[str],
) -> None:
    """The fork server: start Ms on request, reap them, report both.  When
    the command pipe closes it waits for its Ms (SIGKILL after a grace), so
    no M outlives it unnoticed."""
    children: dict[int, int] = {}
    pidfds: dict[int, int] = {}  # pid -> pidfd: an exit is seen at once, not at the next poll
    hints, hint_w = os.pipe()  # Ms write the modules decoding a task imported (gmpd.g)
    os.set_blocking(hints, False)
    preload = Preload()
    preload.load(preload_names, asked=True)

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            with contextlib.suppress(KeyError):
                fd = pidfds.pop(pid)
                poller.unregister(fd)
                os.close(fd)
            with contextlib.suppress(OSError):
                os.write(report, f"exit {children.pop(pid, -1)} {pid} {status}\n".encode())

    buf = b""
    poller = select.poll()  # (select() fails on fds >= 1024: max_ms pidfds can get there)
    poller.register(cmd, select.POLLIN)
    poller.register(hints, select.POLLIN)
    while True:
        ready = {fd for fd, _event in poller.poll(500)}
        reap()
        if hints in ready:
            preload.read(hints)
        if cmd not in ready:
            continue
        data = os.read(cmd, 4096)
        if not data:  # the node agent is shutting down or died
            deadline = time.monotonic() + M_GRACE
            while children and time.monotonic() < deadline:
                time.sleep(0.005)
                reap()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            while children:
                pid, _status = os.waitpid(-1, 0)
                children.pop(pid, None)
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            mid = int(line.split()[1])
            preload.load_pending(hints)
            start = functools.partial(
                m.main,
                nm,
                mid,
                endpoint=endpoint,
                results=results,
                lifeline=lifeline,
                spin_ms=spin_ms,
                hints=hint_w,
            )
            pid = fork(start, close=(cmd, report, hints, *pidfds.values()))
            children[pid] = mid
            pidfds[pid] = os.pidfd_open(pid)
            poller.register(pidfds[pid], select.POLLIN)
            with contextlib.suppress(OSError):  # (the node agent died: the pipe closes next)
                os.write(report, f"pid {mid} {pid}\n".encode())


class NodeAgent:
    def __init__(
        self,
        rundir: str,
        nprocs: int,
        client: int,
        *,
        spin_ms: int,
        max_ms: int = 0,
        preload: list[str] | None = None,
    ) -> None:
        self.nprocs = nprocs
        self.client = client
        self.endpoint = f"ipc://{rundir}/coord"
        self.results = f"ipc://{rundir}/client"  # bound by the client before it started us
        # At least GOMAXPROCS + 1: one M more than Ps from the start (run()).
        self.max_ms = max(max_ms or config.load()["m"]["max_ms_per_p"] * nprocs, nprocs + 1)
        self.nm = NodeMemory.create(nprocs, self.max_ms + 1)  # + sysmon's slot
        try:
            self.link = link_to_coordinator(f"{rundir}/node", self.nm.name, client)
        except BaseException:
            self.nm.close()  # (unlinks it)
            raise
        self.live: dict[int, int] = {}  # M slot -> pid, from the template's reports
        self.watched: dict[int, tuple[int, int]] = {}  # pidfd -> (M slot, pid): deaths seen at once
        self.exited: set[int] = set()  # pids reported dead from their pidfd, the template's line to come
        self.poller = select.poll()  # (select() fails on fds >= 1024: max_ms pidfds can get there)
        self.wanted = 0  # a new M was asked for at max_ms: start it when a slot frees
        cmd_r, self.cmd = os.pipe()
        self.reports, rep_w = os.pipe()
        agent = os.getpid()
        self.template = fork(
            functools.partial(
                template,
                self.nm,
                cmd_r,
                rep_w,
                endpoint=self.endpoint,
                results=self.results,
                lifeline=agent,
                spin_ms=spin_ms,
                preload_names=preload or [],
            ),
            close=(self.cmd, self.reports, self.link.fileno()),
        )
        os.close(cmd_r)
        os.close(rep_w)
        self.sysmon = self.start_sysmon()
        self.sysmon_starts = 1

    def start_sysmon(self) -> int:
        return fork(
            functools.partial(sysmon.main, self.endpoint, self.nm.name, os.getpid()),
            close=(self.cmd, self.reports, self.link.fileno()),
        )

    def spawn(self, mid: int) -> None:
        self.live[mid] = 0  # taken until the template reports its exit
        os.write(self.cmd, f"spawn {mid}\n".encode())

    def newm(self) -> None:
        """The coordinator wants one more M (handoffp found none parked).  At
        max_ms the request waits for an M to exit (counted: MPOOLFULL)."""
        free = [mid for mid in range(self.max_ms) if mid not in self.live]
        if free:
            self.spawn(free[0])
        else:
            self.wanted = 1  # one is enough: the coordinator asks again after its Hello
            self.nm.node.sched_add(Counter.MPOOLFULL, 1)

    def on_reports(self, data: bytes) -> None:
        """The template's "pid"/"exit" lines.  An exited M's slot stays taken
        until the coordinator has recovered it ("r <m>", on_coordinator)."""
        for line in data.decode().splitlines():
            kind, mid, *rest = line.split()
            if kind == "pid":  # the coordinator asks for no more Ms while this one starts
                with contextlib.suppress(OSError):
                    self.link.send(line.encode())
                with contextlib.suppress(OSError):  # (gone and reaped already: its exit line follows)
                    fd = os.pidfd_open(int(rest[0]))
                    self.watched[fd] = (int(mid), int(rest[0]))
                    self.poller.register(fd, select.POLLIN)
            elif kind == "exit":
                self.m_exited(int(mid), int(rest[0]), int(rest[1]))

    def on_m_pidfd(self, fd: int) -> None:
        """An M died: report it now, with the wait status the kernel keeps
        for its zombie (/proc/PID/stat's last field), not when the template
        reaps it: the template may be importing a module for the next M
        (Preload), and a death must be seen within milliseconds."""
        mid, pid = self.watched.pop(fd)
        self.poller.unregister(fd)
        os.close(fd)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return  # reaped already: the template's exit line says it
        if fields[0] == b"Z":
            self.m_exited(mid, pid, int(fields[-1]), early=True)

    def m_exited(self, mid: int, pid: int, status: int, *, early: bool = False) -> None:
        """Tell the coordinator, once per M: ``early`` from its pidfd, else
        from the template's line, which comes for every M it reaped."""
        if early:
            self.exited.add(pid)  # the template's line for it is now a repeat
        elif pid in self.exited:
            self.exited.discard(pid)
            return
        if mid not in self.live:
            return
        self.live[mid] = -1
        with contextlib.suppress(OSError):
            self.link.send(f"exit {mid} {pid} {status}".encode())

    def on_coordinator(self, data: bytes) -> None:
        """ "m": start one more M; "r <m>": dead M m is recovered, its slot free."""
        for line in data.decode().splitlines():
            kind, *rest = line.split()
            if kind == "m":
                self.newm()
            elif kind == "r" and self.live.get(int(rest[0])) == -1:
                mid = int(rest[0])
                del self.live[mid]
                if mid <= self.nprocs:
                    self.spawn(mid)  # one of the first GOMAXPROCS + 1 (retired or dead): replace it
                elif self.wanted:
                    self.wanted = 0
                    self.newm()

    def run(self) -> None:
        # One M more than Ps from the start: it parks until a P is free, and
        # makes "at most GOMAXPROCS Ms run task code" a real constraint.
        for mid in range(self.nprocs + 1):
            self.spawn(mid)
        client = os.pidfd_open(self.client)
        mon = os.pidfd_open(self.sysmon)
        for fd in (client, mon, self.link.fileno(), self.reports):
            self.poller.register(fd, select.POLLIN)
        sys.stdout.write(f"ready {self.nm.name}\n")
        sys.stdout.flush()
        try:
            while True:
                ready = {fd for fd, _event in self.poller.poll(1000)}
                if client in ready:
                    return
                for fd in ready & self.watched.keys():
                    self.on_m_pidfd(fd)
                if mon in ready:  # sysmon died: a node without one never retakes a P
                    os.waitpid(self.sysmon, 0)
                    self.poller.unregister(mon)
                    os.close(mon)
                    self.sysmon = self.start_sysmon()
                    self.sysmon_starts += 1
                    mon = os.pidfd_open(self.sysmon)
                    self.poller.register(mon, select.POLLIN)
                if self.link.fileno() in ready:
                    try:
                        data = self.link.recv(65536)
                    except OSError:
                        data = b""
                    if not data:  # the coordinator exited (shutdown) or died
                        return
                    self.on_coordinator(data)
                if self.reports in ready:
                    data = os.read(self.reports, 65536)
                    if not data:
                        return
                    self.on_reports(data)
        finally:
            os.close(client)
            os.close(mon)
            for fd in self.watched:
                os.close(fd)
            self.watched.clear()

    def stop(self) -> None:
        """Let Ms and the coordinator finish (they got Bye), kill what lingers,
        unlink the segments."""
        deadline = time.monotonic() + GRACE
        os.close(self.cmd)  # the template reaps (or kills) its Ms, then exits
        _reap(self.sysmon, 0.0)  # it holds nothing to lose: SIGKILL at once
        _reap(self.template, deadline + GRACE)
        self.link.close()
        self.nm.close()


def _reap(pid: int, deadline: float) -> None:
    """Wait for child ``pid`` until ``deadline``, then SIGKILL and wait."""
    while time.monotonic() < deadline:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def link_to_coordinator(path: str, node_name: str, client: int) -> socket.socket:
    """Connect to the coordinator's node socket (it may still be starting)
    and name our node memory; returns once it said "ok"."""
    deadline = time.monotonic() + LINK_TIMEOUT
    while True:
        link = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            link.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            link.close()
            if time.monotonic() > deadline or not _alive(client):
                raise RuntimeError(f"no gmpd coordinator at {path}") from None
            time.sleep(0.002)
    link.settimeout(LINK_TIMEOUT)
    link.send(f"node {node_name}".encode())
    if link.recv(64) != b"ok":
        raise RuntimeError("the gmpd coordinator refused this node")
    link.settimeout(None)
    return link


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str]) -> int:
    """``python -m gmpd.node RUNDIR NPROCS CLIENT_PID CWD SYS_PATH_JSON SPIN_MS MAX_MS PRELOAD_JSON``."""
    rundir, nprocs, client, cwd = argv[0], int(argv[1]), int(argv[2]), argv[3]
    paths, spin_ms, max_ms = json.loads(argv[4]), int(argv[5]), int(argv[6])
    preload = json.loads(argv[7]) if len(argv) > 7 else []
    os.setsid()  # the user's Ctrl-C reaches the client, which shuts us down
    os.chdir(cwd)
    sys.path[:0] = [p for p in paths if p not in sys.path]
    agent = NodeAgent(rundir, nprocs, client, spin_ms=spin_ms, max_ms=max_ms, preload=preload)
    try:
        agent.run()
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
