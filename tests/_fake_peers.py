"""Systems for the bench runner's tests (tests/test_peers.py): a peer that
works, hangs against its deadline, crashes, returns a wrong result, is not
installed, ignores its deadline while holding a process, whose
interpreter dies, or dies leaving a forked worker behind.  ``register``
puts them where ``peers.start`` finds them, in the test's process or in a
runner (``bench.RUNNER``)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from gmpd import peers
from gmpd.peers import Deadline, System, Unavailable


class Fake(System):
    """A system driven by a function."""

    form = "a fake"
    behave: Callable[[list[Any], Deadline], list[Any]] = staticmethod(lambda args, d: list(args))

    def run_all(self, fn: Callable[..., Any], args: Any, deadline: Deadline) -> list[Any]:
        return type(self).behave(list(args), deadline)

    def close(self, clean: bool = True) -> None:
        pass


def make(name: str, behave: Callable[[list[Any], Deadline], list[Any]]) -> type[System]:
    return type(name, (Fake,), {"name": name, "behave": staticmethod(behave)})


def hang(args: list[Any], d: Deadline) -> list[Any]:
    forever = threading.Event()
    while not forever.wait(0.01):
        d.left()  # how every adapter waits: against the run's deadline
    return args


def crash(args: list[Any], d: Deadline) -> list[Any]:
    raise BrokenPipeError("a worker died")


def wrong(args: list[Any], d: Deadline) -> list[Any]:
    return [*args[:-1], -1]


STUCK_PIDS = "GMPD_TEST_STUCK_PIDS"  # where "stuck" writes the pid of the process it holds


def stuck(args: list[Any], d: Deadline) -> list[Any]:
    """Holds a process of its own and sleeps past any deadline, as a peer
    stuck in C code would."""
    worker = subprocess.Popen(["sleep", "600"])
    with open(os.environ[STUCK_PIDS], "a") as f:
        f.write(f"{worker.pid}\n")
    time.sleep(600)
    return args


def dies(args: list[Any], d: Deadline) -> list[Any]:
    os._exit(3)


def orphans(args: list[Any], d: Deadline) -> list[Any]:
    """Forks a worker that outlives its parent (as PPE's do, holding every
    file the runner had open), then dies."""
    worker = os.fork()
    if worker == 0:
        time.sleep(600)
        os._exit(0)
    with open(os.environ[STUCK_PIDS], "a") as f:
        f.write(f"{worker}\n")
    os._exit(3)


class Missing(Fake):
    name = "missing"

    def __init__(self, workers: int) -> None:
        raise Unavailable("missing is not installed (pip install 'gmpd[peers]')")


SYSTEMS: dict[str, type[System]] = {
    "good": make("good", lambda args, d: args),
    "hang": make("hang", hang),
    "crash": make("crash", crash),
    "wrong": make("wrong", wrong),
    "missing": Missing,
    "stuck": make("stuck", stuck),
    "dies": make("dies", dies),
    "orphans": make("orphans", orphans),
}


def register(names: list[str]) -> None:
    """Make ``names`` startable by peers.start, with no warm-up round (these
    fakes ignore the task they are given)."""
    for name in names:
        peers.ADAPTERS[name] = SYSTEMS[name]
        peers.FORMS[name] = SYSTEMS[name].form
    peers.wait_ready = no_warm_up


def no_warm_up(system: System, deadline: Deadline) -> None:
    pass
