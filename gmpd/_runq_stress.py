"""Multi-process stress of the native run queues, with optional SIGKILL chaos.

Used by tests/test_runq_stress.py and bench/runq.py.  One owner process puts
Gs 1..total into P0 (runnext one time in eight, spilling half a full ring to
its log as the "global queue") and gets some back; thief processes, each on
its own P, get from their own ring and otherwise steal (Go's stealWork: four
passes, runnext on the last).  The loops are C (native/stress.c); this module
starts them, kills them, recovers them and checks the outcome.

Recovery after a SIGKILL, as the runtime will do it (runq.c §3):
  1. reap the dead process;
  2. ``recover_m`` finishes or rolls back its in-flight ring step and returns
     the Gs it had taken out of every queue (orphans);
  3. orphans the dead M already appended to its log (it held them and
     recorded them, then died before its next ring op) are dropped: its log
     ends with exactly those Gs; the rest go to the recovered list (the
     stand-in for the global queue);
  4. the owner's resume point: the G it was putting is accepted iff its op
     record names a put of that G (then it is queued or was just orphaned);
  5. start a replacement process on the same M slot and P.
At the end every G 1..total must appear exactly once across the logs, the
recovered list and whatever is left in the rings.

Runs in: the test or benchmark process (the harness); workers run ``main``.
"""

from __future__ import annotations

import random
import select
import subprocess
import sys
import time
from dataclasses import dataclass

from gmpd.native import _native
from gmpd.runq import OpState, recover_m
from gmpd.shm import NodeMemory, Segment


@dataclass(frozen=True)
class StressResult:
    total: int
    thieves: int
    elapsed_s: float
    seen: int
    lost: int
    duplicated: int
    checksum_ok: bool
    stolen: int
    steals: int
    steal_seconds: float
    kills: int
    kills_inflight: int
    kills_held: int
    recovered: int

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.checksum_ok and self.seen == self.total


class _Worker:
    """One C loop in its own process, on M slot ``m`` and P ``p``."""

    def __init__(self, role: str, node: str, ctl: str, p: int, m: int) -> None:
        self.role, self.node, self.ctl, self.p, self.m = role, node, ctl, p, m
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = False

    def start(self, seed: int) -> None:
        cmd = [sys.executable, "-m", "gmpd._runq_stress", self.role, self.node, self.ctl]
        cmd += [str(self.p), str(self.m), str(seed)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.ready = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def in_loop(self) -> bool:
        """Whether the worker has said it entered the C loop (so a kill lands there)."""
        out = self.proc.stdout if self.proc is not None else None
        if not self.ready and out is not None and select.select([out], [], [], 0)[0]:
            out.read(1)
            out.close()
            self.ready = True
        return self.ready and self.alive()

    def reap(self) -> None:
        if self.proc is not None:
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


class _Harness:
    def __init__(self, total: int, thieves: int, seed: int) -> None:
        self.total, self.thieves = total, thieves
        self.rng = random.Random(seed)
        nprocs = thieves + 1
        self.nm = NodeMemory.create(nprocs, nprocs + 1)  # the last M slot is the harness's own
        try:
            self.ctl = Segment.create(_native.stress_size(nprocs, total), "stress")
        except BaseException:
            self.nm.close()
            raise
        _native.stress_init(self.ctl.buf, total, nprocs, nprocs)
        self.workers = [_Worker("owner", self.nm.name, self.ctl.name, 0, 0)]
        self.workers += [_Worker("thief", self.nm.name, self.ctl.name, i, i) for i in range(1, nprocs)]
        self.recovered: list[int] = []
        self.kills = 0
        self.caught = [0, 0, 0]  # op-record state seen at each recovery: idle, in flight, held

    # -- control segment fields (gmpd_stress in native/stress.h) --
    def _u32(self, index: int) -> int:
        return int.from_bytes(self.ctl.buf[index * 4 : index * 4 + 4], "little")

    def _set_u32(self, index: int, value: int) -> None:
        self.ctl.buf[index * 4 : index * 4 + 4] = value.to_bytes(4, "little")

    def _u64_array(self, offset: int, n: int) -> list[int]:
        return list(memoryview(self.ctl.buf)[offset : offset + 8 * n].cast("Q"))

    def _log_base(self, m: int) -> int:
        per = 64 + ((self.total * 4 + 63) & ~63)
        return _native.STRESS_HEADER + m * per

    def log(self, m: int) -> memoryview:
        base = self._log_base(m)
        count = int.from_bytes(self.ctl.buf[base : base + 8], "little")
        return memoryview(self.ctl.buf)[base + 64 : base + 64 + 4 * count].cast("I")

    # -- recovery (module docstring, steps 2-4) --
    def recover(self, w: _Worker) -> None:
        rec = recover_m(self.nm.node, w.m)
        orphans = rec.orphans
        self.caught[rec.state] += 1
        if orphans and rec.state == OpState.HELD:
            log = self.log(w.m)
            k = len(orphans)
            if len(log) >= k and tuple(log[len(log) - k :]) == orphans:
                orphans = ()  # already recorded by the dead M
            log.release()
        self.recovered.extend(orphans)
        if w.role == "owner" and rec.accepted(self._u32(1)):
            self._set_u32(1, rec.arg + 1)

    def kill_one(self) -> None:
        live = [w for w in self.workers if w.in_loop()]
        if not live:
            return
        w = self.rng.choice(live)
        assert w.proc is not None
        w.proc.kill()
        w.reap()
        self.kills += 1
        if w.proc.returncode == 0:
            return  # it finished before the signal landed
        self.recover(w)
        w.start(self.rng.getrandbits(63))

    def run(self, kill_interval: float, max_kills: int, timeout: float) -> StressResult:
        t0 = time.monotonic()
        for w in self.workers:
            w.start(self.rng.getrandbits(63))
        deadline = t0 + timeout
        while not all(w.in_loop() for w in self.workers):
            if time.monotonic() > deadline or any(w.proc is not None and w.proc.poll() for w in self.workers):
                raise RuntimeError("a run queue stress worker failed to start")
            time.sleep(0.001)
        self._set_u32(7, 1)  # go: the start barrier (gmpd_stress.go)
        t0 = time.monotonic()
        while any(w.alive() for w in self.workers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run queue stress did not finish in {timeout:.0f}s")
            if kill_interval > 0 and self.kills < max_kills:
                time.sleep(self.rng.expovariate(1 / kill_interval))
                self.kill_one()
            else:
                time.sleep(0.005)
        elapsed = time.monotonic() - t0
        for w in self.workers:
            if w.proc is not None and w.proc.returncode != 0:
                raise RuntimeError(f"{w.role} worker exited with status {w.proc.returncode}")
        return self.verify(elapsed)

    def verify(self, elapsed: float) -> StressResult:
        counts = bytearray(self.total + 1)
        seen = checksum = invalid = 0
        spare = self.nm.node.nms - 1
        leftovers: list[int] = []
        for p in range(self.nm.node.nprocs):  # whatever is still queued
            leftovers.extend(self.nm.runq(p, spare).drain())
        self.nm.node.release(spare)
        sources: list[memoryview | list[int]] = [self.log(m) for m in range(len(self.workers))]
        sources += [self.recovered, leftovers]
        for src in sources:
            for g in src:
                if not 0 < g <= self.total:
                    invalid += 1
                elif counts[g] < 255:
                    counts[g] += 1
                seen += 1
                checksum += g
            if isinstance(src, memoryview):
                src.release()
        lost = counts.count(0) - 1  # index 0 is not a G
        duplicated = invalid + sum(c - 1 for c in counts if c > 1)
        nlogs = len(self.workers)
        stolen = self._u64_array(32, 64)[:nlogs]
        steals = self._u64_array(32 + 8 * 64, 64)[:nlogs]
        steal_ns = self._u64_array(32 + 16 * 64, 64)[:nlogs]
        return StressResult(
            total=self.total,
            thieves=self.thieves,
            elapsed_s=elapsed,
            seen=seen,
            lost=lost,
            duplicated=duplicated,
            checksum_ok=checksum == self.total * (self.total + 1) // 2,
            stolen=sum(stolen),
            steals=sum(steals),
            steal_seconds=max(steal_ns[1:], default=0) / 1e9,
            kills=self.kills,
            kills_inflight=self.caught[1],
            kills_held=self.caught[2],
            recovered=len(self.recovered),
        )

    def close(self) -> None:
        self._set_u32(3, 1)  # stop
        for w in self.workers:
            if w.alive():
                assert w.proc is not None
                w.proc.kill()
            w.reap()
        self.nm.close()
        self.ctl.close()


def run_stress(
    total: int = 2_000_000,
    thieves: int = 2,
    *,
    kill_interval: float = 0.0,
    max_kills: int = 0,
    seed: int = 1,
    timeout: float = 300.0,
) -> StressResult:
    """Push ``total`` Gs through one owner and ``thieves`` thieves; verify.

    With ``kill_interval`` > 0, SIGKILL a random worker every
    ``kill_interval`` seconds on average (at most ``max_kills`` times),
    recover it and start a replacement.
    """
    h = _Harness(total, thieves, seed)
    try:
        return h.run(kill_interval, max_kills, timeout)
    finally:
        h.close()


def main(argv: list[str]) -> int:
    """Worker entry: ``python -m gmpd._runq_stress ROLE NODE CTL P M SEED``."""
    role, node_name, ctl_name = argv[0], argv[1], argv[2]
    p, m, seed = int(argv[3]), int(argv[4]), int(argv[5])
    nm = NodeMemory.attach(node_name)
    ctl = Segment.attach(ctl_name)
    sys.stdout.write("r")  # tell the harness a kill from now on lands in the loop
    sys.stdout.flush()
    try:
        return nm.node.stress(role, ctl.buf, p, m, seed)
    finally:
        nm.close()
        ctl.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
