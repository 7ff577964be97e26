"""Task payloads (gmpd.g encode_task / decode_task): what a function costs
to send, and that a cached pickle never sends a stale function."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest

from gmpd import g

SCRIPT = """
K = 1
TABLE = [10, 20]
import math

def helper(x):
    return x + K

def add_k(x, scale=1):
    return helper(x) * scale + int(math.sqrt(K * K)) - K

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def look_up(i):
    return TABLE[i]

def make_counter():
    seen = 0
    def step(x):
        return x + seen
    def bump():
        nonlocal seen
        seen += 1
    return step, bump
"""


def script() -> dict[str, Any]:
    """The namespace of a script's __main__: its functions travel by value."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent(SCRIPT), ns)
    return ns


@pytest.fixture
def pickles(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every object cloudpickle pickles while encoding (what was not cached)."""
    seen: list[object] = []
    real = cloudpickle.dumps

    def counting(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        seen.append(obj)
        return bytes(real(obj, *args, **kwargs))

    monkeypatch.setattr(cloudpickle, "dumps", counting)
    g._BY_VALUE.clear()
    return seen


def run(fn: Callable[..., Any], *args: Any) -> Any:
    """What an M computes for the payload (a fresh decode, as in an M)."""
    f, a, kw = g.decode_task(g.encode_task(fn, args, {}))
    return f(*a, **kw)


def test_a_scripts_function_is_pickled_once_while_nothing_it_names_changes(pickles: list[object]) -> None:
    ns = script()
    payloads = {g.encode_task(ns["add_k"], (i,), {})[:-20] for i in range(50)}
    assert pickles == [ns["add_k"]], "pickled by value once, with its helper inside"
    assert len({p[: 5 + int.from_bytes(p[1:5], "little")] for p in payloads}) == 1
    assert run(ns["add_k"], 4) == 5
    fn, _, _ = g.decode_task(g.encode_task(ns["add_k"], (1,), {}))
    again, _, _ = g.decode_task(g.encode_task(ns["add_k"], (2,), {}))
    assert fn is again, "an M loads the function once"


def test_a_rebound_global_or_default_is_sent_anew(pickles: list[object]) -> None:
    ns = script()
    assert run(ns["add_k"], 4) == 5
    ns["K"] = 3  # a global the helper names
    assert run(ns["add_k"], 4) == 7
    ns["helper"] = lambda x: -x  # the helper itself
    assert run(ns["add_k"], 4) == -4
    ns["add_k"].__defaults__ = (2,)
    assert run(ns["add_k"], 4) == -8
    assert len(pickles) == 4


def test_a_changed_closure_cell_is_sent_anew(pickles: list[object]) -> None:
    step, bump = script()["make_counter"]()
    assert run(step, 1) == 1
    bump()
    assert run(step, 1) == 2
    assert len(pickles) == 2


def test_a_function_naming_a_mutable_global_is_pickled_at_every_call(pickles: list[object]) -> None:
    ns = script()
    assert run(ns["look_up"], 1) == 20
    ns["TABLE"].append(30)  # changed in place: no cached pickle could know
    assert run(ns["look_up"], 2) == 30
    assert len(pickles) == 2
    assert g.encode_task(ns["look_up"], (0,), {})[:1] == b"V"


def test_a_recursive_function_seals(pickles: list[object]) -> None:
    ns = script()
    assert [run(ns["fib"], 10) for _ in range(3)] == [55] * 3
    assert len(pickles) == 1


def test_an_importable_function_still_travels_by_name(pickles: list[object]) -> None:
    payload = g.encode_task(g.handle_p, (1 << 22,), {})
    assert b"handle_p" in payload and len(payload) < 100
    assert pickles == []


def test_a_scripts_rebound_global_reaches_the_task_end_to_end() -> None:
    """From a real script: the cache follows rebinding, and a global changed
    in place reaches the next task (as when it was pickled every time)."""
    code = """
        import gmpd

        K = 1
        TABLE = [1]

        def add_k(x):
            return x + K

        def table_len(_):
            return len(TABLE)

        with gmpd.Executor(2) as ex:
            first = [f.result(timeout=30) for f in [ex.submit(add_k, i) for i in range(20)]]
            K = 100
            second = ex.submit(add_k, 0).result(timeout=30)
            before = ex.submit(table_len, 0).result(timeout=30)
            TABLE.append(2)
            after = ex.submit(table_len, 0).result(timeout=30)
            print(first == [i + 1 for i in range(20)], second, before, after)
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "100", "1", "2"]


def test_a_module_registered_by_value_sends_its_functions_by_value(pickles: list[object]) -> None:
    """cloudpickle.register_pickle_by_value: the M may not have the module."""
    mod = types.ModuleType("gmpd_test_by_value_mod")
    exec("def triple(x):\n    return 3 * x\n", mod.__dict__)
    sys.modules[mod.__name__] = mod
    cloudpickle.register_pickle_by_value(mod)
    try:
        payload = g.encode_task(mod.triple, (2,), {})
    finally:
        cloudpickle.unregister_pickle_by_value(mod)
        del sys.modules[mod.__name__]
    fn, args, _ = g.decode_task(payload)  # the module is gone, as on an M that never had it
    assert fn(*args) == 6
