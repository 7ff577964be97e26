"""Task payloads (gmpd.g encode_task / decode_task): what a function costs
to send, and that a cached pickle never sends a stale function."""

from __future__ import annotations

import functools
import gc
import importlib
import subprocess
import sys
import textwrap
import types
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest

from gmpd import g, seal

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
def pickles(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every object cloudpickle pickles while encoding (what was not cached)."""
    seen: list[Any] = []
    real = cloudpickle.dumps

    def counting(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        seen.append(obj)
        return bytes(real(obj, *args, **kwargs))

    monkeypatch.setattr(cloudpickle, "dumps", counting)
    seal._SEALS.clear()
    return seen


def package(where: Any, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """An importable package ``name`` with a submodule ``sub`` (X = 7), not imported yet."""
    (where / name).mkdir()
    (where / name / "__init__.py").write_text("")
    (where / name / "sub.py").write_text("X = 7\n")
    monkeypatch.syspath_prepend(str(where))


def run(fn: Callable[..., Any], *args: Any) -> Any:
    """What an M computes for the payload (a fresh decode, as in an M)."""
    f, a, kw, _files = g.decode_task(g.encode_task(fn, args, {}))
    return f(*a, **kw)


def test_a_scripts_function_is_pickled_once_while_nothing_it_names_changes(pickles: list[Any]) -> None:
    ns = script()
    payloads = [g.encode_task(ns["add_k"], (i,), {}) for i in range(50)]
    assert payloads[0][:1] == b"V", "the first submit goes as before: a lambda made per call is seen once"
    assert [obj[0] for obj in pickles] == [ns["add_k"]] * 2, "then pickled by value once, its helper inside"
    assert len({p[: 5 + int.from_bytes(p[1:5], "little")] for p in payloads[1:]}) == 1
    assert run(ns["add_k"], 4) == 5
    fn, *_ = g.decode_task(g.encode_task(ns["add_k"], (1,), {}))
    again, *_ = g.decode_task(g.encode_task(ns["add_k"], (2,), {}))
    assert fn is again, "an M loads the function once"


def test_a_rebound_global_or_default_is_sent_anew(pickles: list[Any]) -> None:
    ns = script()
    assert run(ns["add_k"], 4) == 5
    ns["K"] = 3  # a global the helper names
    assert run(ns["add_k"], 4) == 7
    ns["helper"] = lambda x: -x  # the helper itself
    assert run(ns["add_k"], 4) == -4
    ns["add_k"].__defaults__ = (2,)
    assert run(ns["add_k"], 4) == -8
    assert len(pickles) == 4


def test_a_changed_closure_cell_is_sent_anew(pickles: list[Any]) -> None:
    step, bump = script()["make_counter"]()
    assert run(step, 1) == 1
    bump()
    assert run(step, 1) == 2
    assert len(pickles) == 2


def test_a_function_naming_a_mutable_global_is_pickled_at_every_call(pickles: list[Any]) -> None:
    ns = script()
    assert run(ns["look_up"], 1) == 20
    ns["TABLE"].append(30)  # changed in place: no cached pickle could know
    assert run(ns["look_up"], 2) == 30
    assert len(pickles) == 2
    assert g.encode_task(ns["look_up"], (0,), {})[:1] == b"V"


def test_a_recursive_function_seals(pickles: list[Any]) -> None:
    ns = script()
    assert [run(ns["fib"], 10) for _ in range(3)] == [55] * 3
    assert len(pickles) == 2  # (the first submit, then the seal)


def test_an_importable_function_still_travels_by_name(pickles: list[Any]) -> None:
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


def test_a_module_registered_by_value_sends_its_functions_by_value(pickles: list[Any]) -> None:
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
    fn, args, *_ = g.decode_task(payload)  # the module is gone, as on an M that never had it
    assert fn(*args) == 6


def test_a_remote_traceback_names_the_scripts_file_and_line(tmp_path: Any) -> None:
    """cloudpickle names code sent by value "<dynamic-code>": the M puts the
    file back, so the traceback shows where the task failed, with its text."""
    path = tmp_path / "farm.py"
    path.write_text(
        textwrap.dedent("""
        import gmpd

        TABLE = [0]

        def divide(x):
            return helper(x)

        def helper(x):
            return 1 / x  # the failing line

        def divide_table(i):
            return (lambda: 1 / TABLE[i])()  # a lambda inside, and a mutable global: pickled every call

        with gmpd.Executor(2) as ex:
            for fn in (divide, divide, divide_table):  # (divide's second submit is sealed)
                try:
                    ex.submit(fn, 0).result(timeout=30)
                except ZeroDivisionError as exc:
                    print(str(exc.__cause__))
            try:
                list(ex.map(divide, [1, 0], chunksize=2))  # (divide travels as run_chunk's argument)
            except ZeroDivisionError as exc:
                print(str(exc.__cause__))
        """)
    )
    out = subprocess.run([sys.executable, str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "<dynamic-code>" not in out.stdout
    lines = ("line 7, in divide", "line 10, in helper", "line 13, in divide_table", "line 13, in <lambda>")
    for where in lines:
        assert f'File "{path}", {where}' in out.stdout, out.stdout
    assert out.stdout.count(f'File "{path}", line 10, in helper') == 3, "in both forms, V then R, and in map"
    assert "return 1 / x  # the failing line" in out.stdout, "the source line, read on the M's host"
    assert "1 / TABLE[i]" in out.stdout


def test_a_changed_docstring_module_or_annotation_is_sent_anew(pickles: list[Any]) -> None:
    """cloudpickle sends them too; code that introspects the function sees them."""
    fn = script()["add_k"]
    fn.__annotations__["x"] = int
    for _ in range(2):
        run(fn, 1)
    fn.__doc__ = "v2"
    fn.__module__ = "renamed"
    fn.__annotations__["x"] = str
    loaded, *_ = g.decode_task(g.encode_task(fn, (1,), {}))
    assert (loaded.__doc__, loaded.__module__, loaded.__annotations__) == ("v2", "renamed", {"x": str})


def test_keyword_defaults_changed_in_place_are_sent(pickles: list[Any]) -> None:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("def scaled(x, *, scale):\n    return x * scale\n", ns)
    fn = ns["scaled"]
    fn.__kwdefaults__ = {}  # (empty, so falsy)
    for _ in range(2):
        f, args, kwargs, _ = g.decode_task(g.encode_task(fn, (2,), {"scale": 1}))
        assert f(*args, **kwargs) == 2
    fn.__kwdefaults__["scale"] = 10
    assert run(fn, 2) == 20


def test_a_pickle_changed_while_it_was_made_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread rebinding a global while cloudpickle runs: that pickle
    may hold the old value, so it must not be reused."""
    ns = script()
    seal._SEALS.clear()
    real = cloudpickle.dumps

    def rebinding(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        data = bytes(real(obj, *args, **kwargs))
        ns["K"] = 2  # (as if another thread did it right now)
        return data

    run(ns["add_k"], 0)  # seen once
    monkeypatch.setattr(cloudpickle, "dumps", rebinding)
    g.encode_task(ns["add_k"], (0,), {})  # sealed with K = 1, and K is 2 after
    monkeypatch.setattr(cloudpickle, "dumps", real)
    assert run(ns["add_k"], 0) == 2


def test_a_submodule_imported_since_the_seal_makes_a_new_pickle(
    pickles: list[Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cloudpickle sends the imported submodules of a package the function
    names: one imported later must reach the M too."""
    package(tmp_path, monkeypatch, "gmpd_test_pkg")
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("import gmpd_test_pkg\ndef get():\n    return gmpd_test_pkg.sub.X\n", ns)
    try:
        for _ in range(3):
            g.encode_task(ns["get"], (), {})
        assert len(pickles) == 2
        importlib.import_module("gmpd_test_pkg.sub")
        g.encode_task(ns["get"], (), {})
        assert len(pickles) == 3
        assert b"gmpd_test_pkg.sub" in g.encode_task(ns["get"], (), {})
    finally:
        for name in ("gmpd_test_pkg.sub", "gmpd_test_pkg"):
            sys.modules.pop(name, None)


def test_a_module_registered_by_value_after_a_submit_goes_by_value(pickles: list[Any]) -> None:
    mod = types.ModuleType("gmpd_test_late_mod")
    exec("def triple(x):\n    return 3 * x\n", mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        assert b"gmpd_test_late_mod" in g.encode_task(mod.triple, (2,), {})  # by name
        cloudpickle.register_pickle_by_value(mod)
        try:
            payload = g.encode_task(mod.triple, (2,), {})
        finally:
            cloudpickle.unregister_pickle_by_value(mod)
    finally:
        del sys.modules[mod.__name__]
    fn, args, *_ = g.decode_task(payload)
    assert fn(*args) == 6


class _Proxy:
    """Like a lazy proxy of a web framework: asking its class raises."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("working outside of application context")


def test_a_global_only_used_as_an_attribute_name_is_not_inspected(pickles: list[Any]) -> None:
    ns: dict[str, Any] = {"__name__": "__main__", "request": _Proxy()}
    exec("import types\ndef f(x):\n    return types.SimpleNamespace(request=x).request\n", ns)
    assert [run(ns["f"], i) for i in range(3)] == [0, 1, 2]
    assert len(pickles) == 2


def test_a_function_that_cannot_be_sealed_is_judged_once(
    pickles: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = script()
    ns["BIG"] = tuple(range(100_000))
    exec("def big(i):\n    return BIG[i] + TABLE[0]\n", ns)
    judged = []
    real = seal._seal

    def counting(*args: Any) -> bool:
        judged.append(1)
        return real(*args)

    monkeypatch.setattr(seal, "_seal", counting)
    assert [run(ns["big"], i) for i in range(5)] == [10 + i for i in range(5)]
    assert len(judged) == 1, "nothing it names changed: not judged again"
    ns["TABLE"] = [0]
    assert run(ns["big"], 5) == 5
    assert len(judged) == 2


def test_lambdas_made_per_call_are_pickled_once_each_and_not_kept(pickles: list[Any]) -> None:
    data = b"x" * 100_000
    for i in range(50):
        assert run(lambda j=i: len(data) + j) == 100_000 + i
    assert len(pickles) == 50, "one pickle a lambda, with its arguments, as before"
    for _ in range(50):
        fn = lambda: len(data)  # noqa: E731 - a lambda, submitted twice, then dropped
        run(fn)
        run(fn)
    del fn
    pickles.clear()  # (it holds what was pickled)
    gc.collect()
    assert len(seal._SEALS) <= 1, "the seals went with their lambdas"


def test_an_ms_function_cache_evicts_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(g, "_CACHE_MAX", 8)
    monkeypatch.setattr(g, "_LOADED", {})
    monkeypatch.setattr(g, "_LOADED_BYTES", [0])
    stable = script()["add_k"]
    first, *_ = g.decode_task(g.encode_task(stable, (1,), {}) and g.encode_task(stable, (1,), {}))
    for i in range(20):
        ns = script()
        ns["K"] = i
        g.decode_task(g.encode_task(ns["add_k"], (1,), {}) and g.encode_task(ns["add_k"], (1,), {}))
        again, *_ = g.decode_task(g.encode_task(stable, (1,), {}))
        assert again is first or i > 0
    assert len(g._LOADED) == 8
    assert sum(map(len, g._LOADED)) == g._LOADED_BYTES[0]


def test_a_global_rebound_between_judging_and_recording_is_not_sealed(
    pickles: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread rebinding K to a list right after fn was judged: the
    pickle then holds the list, which may change in place."""
    ns = script()
    real = seal._judge
    calls: list[bool] = []

    def judge_then_rebind(*args: Any) -> bool:
        ok = real(*args)
        if not calls:
            ns["K"] = [1]  # (as if another thread did it right now)
        calls.append(ok)
        return ok

    exec("def k_of(x):\n    return K\n", ns)
    run(ns["k_of"], 0)  # seen once
    monkeypatch.setattr(seal, "_judge", judge_then_rebind)
    assert run(ns["k_of"], 0) == [1]
    ns["K"].append(2)
    assert run(ns["k_of"], 0) == [1, 2]


def test_a_recursive_closure_is_not_kept_alive_by_its_seal(pickles: list[Any]) -> None:
    ns = script()
    exec("def outer(k):\n    def rec(n):\n        return k if n < 1 else rec(n - 1)\n    return rec\n", ns)
    refs = []
    for k in range(20):
        rec = ns["outer"](k)
        assert [run(rec, 3) for _ in range(3)] == [k] * 3
        refs.append(weakref.ref(rec))
    del rec
    pickles.clear()
    gc.collect()
    assert not any(r() for r in refs), "a seal held its own function through the function's cell"


def test_annotations_are_judged_like_globals(pickles: list[Any]) -> None:
    """cloudpickle sends annotations by value: a script's class there may
    change in place; plain types and their generics are sealed."""
    ns = script()
    for source in (
        "class Cfg:\n    scale = 1\ndef typed(x: Cfg) -> int:\n    return x\n",
        "def generic(xs: list[int], y: int | None = None) -> dict[str, int]:\n    return {}\n",
    ):  # (not under this file's `from __future__ import annotations`: real objects)
        exec(compile(source, "<script>", "exec", dont_inherit=True), ns)
    assert [g.encode_task(ns["typed"], (1,), {})[:1] for _ in range(3)] == [b"V"] * 3
    assert [g.encode_task(ns["generic"], ([],), {})[:1] for _ in range(3)] == [b"V", b"R", b"R"]


def test_a_submodule_imported_as_another_module_leaves_makes_a_new_pickle(
    pickles: list[Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same count of imported modules, not the same modules."""
    package(tmp_path, monkeypatch, "gmpd_test_pkg2")
    sys.modules["gmpd_test_placeholder"] = types.ModuleType("gmpd_test_placeholder")
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("import gmpd_test_pkg2\ndef get():\n    return gmpd_test_pkg2.sub.X\n", ns)
    try:
        for _ in range(3):
            g.encode_task(ns["get"], (), {})
        count = len(sys.modules)
        del sys.modules["gmpd_test_placeholder"]
        importlib.import_module("gmpd_test_pkg2.sub")
        assert len(sys.modules) == count
        assert b"gmpd_test_pkg2.sub" in g.encode_task(ns["get"], (), {})
    finally:
        for name in ("gmpd_test_pkg2.sub", "gmpd_test_pkg2", "gmpd_test_placeholder"):
            sys.modules.pop(name, None)


class _AttrDict(dict[str, Any]):
    """Callable, and every attribute lookup raises KeyError."""

    def __getattr__(self, name: str) -> Any:
        return self[name]

    def __call__(self, x: int) -> int:
        return 3 * x


def test_a_callable_whose_getattr_raises_is_sent_as_before(pickles: list[Any]) -> None:
    assert run(_AttrDict(), 2) == 6


def test_a_global_rebound_at_every_submit_goes_by_value_without_churning(pickles: list[Any]) -> None:
    """A task reading a loop variable of the script: after a few re-seals in
    a row it is sent by value at each call, and the M's cache stays."""
    ns = script()
    exec("def step(x):\n    return x + K\n", ns)
    forms = []
    for i in range(40):
        ns["K"] = 1000 + i  # (a new int object each time)
        payload = g.encode_task(ns["step"], (1,), {})
        forms.append(payload[:1])
        f, args, kwargs, _ = g.decode_task(payload)
        assert f(*args, **kwargs) == 1001 + i
    assert forms[-30:] == [b"V"] * 30, forms


def failing_text(fn: Callable[..., Any], *args: Any) -> str:
    """The traceback text an M sends for ``fn(*args)`` (decoded, run, failed)."""
    f, args, kwargs, files = g.decode_task(g.encode_task(fn, args, {}))
    try:
        f(*args, **kwargs)
    except Exception as exc:
        _exc, text = cloudpickle.loads(g.error_payload(exc, files=files))
        assert seal.DYNAMIC_FILE not in text, text
        return str(text)
    raise AssertionError("it did not fail")


def test_a_v_task_is_not_relocated_unless_it_fails(tmp_path: Any) -> None:
    """The M names by-value files only in a traceback (a task that succeeds
    pays nothing), including code that no global reaches: a helper given
    as a default, and a method of a script's class."""
    ns: dict[str, Any] = {"__name__": "__main__", "BOXES": []}  # (mutable: by value at each call)
    exec(compile("def helper(x):\n    return 1 / x\n", str(tmp_path / "cell_A.py"), "exec"), ns)
    source = "class Box:\n    def div(self, x, h=helper):\n        return h(x)\n"
    source += "def go(x):\n    BOXES.clear()\n    return Box().div(x)\n"
    exec(compile(source, str(tmp_path / "cell_B.py"), "exec"), ns)
    fn, *_ = g.decode_task(g.encode_task(ns["go"], (0,), {}))
    assert fn.__code__.co_filename == seal.DYNAMIC_FILE
    text = failing_text(ns["go"], 0)
    for where in ('cell_B.py", line 6, in go', 'cell_B.py", line 3, in div', 'cell_A.py", line 2, in helper'):
        assert where in text, text


def test_two_lambdas_on_the_same_line_of_two_cells_keep_their_files(tmp_path: Any) -> None:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile("lam_b = lambda: 1 // 1\n", str(tmp_path / "cell_B.py"), "exec"), ns)
    exec(compile("lam_c = lambda: 1 // 0\n", str(tmp_path / "cell_C.py"), "exec"), ns)
    exec(compile("def both():\n    return lam_b() + lam_c()\n", str(tmp_path / "cell_D.py"), "exec"), ns)
    for _ in range(2):  # by value at each call, then sealed
        assert 'cell_C.py", line 1, in <lambda>' in failing_text(ns["both"])


def test_a_closure_that_writes_its_cell_starts_each_task_from_the_clients_value(pickles: list[Any]) -> None:
    ns = script()
    source = "def make():\n    n = 0\n    def count():\n        nonlocal n\n"
    exec(source + "        n += 1\n        return n\n    return count\n", ns)
    count = ns["make"]()
    assert [run(count) for _ in range(5)] == [1] * 5


def test_a_package_in_a_closure_cell_sends_submodules_imported_since(
    pickles: list[Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    package(tmp_path, monkeypatch, "gmpd_test_pkg3")
    pkg = importlib.import_module("gmpd_test_pkg3")
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("def make(pkg):\n    def get():\n        return pkg.sub.X\n    return get\n", ns)
    get = ns["make"](pkg)
    try:
        for _ in range(3):
            g.encode_task(get, (), {})
        importlib.import_module("gmpd_test_pkg3.sub")
        assert b"gmpd_test_pkg3.sub" in g.encode_task(get, (), {})
    finally:
        for name in ("gmpd_test_pkg3.sub", "gmpd_test_pkg3"):
            sys.modules.pop(name, None)


class _ImportingNow(dict[str, Any]):
    """sys.modules while another thread imports: iterating it raises."""

    def __reversed__(self) -> Any:
        raise RuntimeError("dictionary changed size during iteration")


def test_an_import_in_another_thread_does_not_fail_a_submit(
    pickles: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = script()
    exec("import xml\ndef parse(x):\n    return xml.__name__\n", ns)
    monkeypatch.setattr(seal, "sys", types.SimpleNamespace(modules=_ImportingNow(sys.modules)))
    assert [run(ns["parse"], 0) for _ in range(4)] == ["xml"] * 4
    assert len(pickles) == 4, "a version that cannot be read is equal to none"


def test_a_long_chain_of_exceptions_is_formatted() -> None:
    """1,200 exceptions, each raised from the one before (it recursed once
    per link: RecursionError inside the M's except clause)."""
    err: BaseException | None = None
    for i in range(1200):
        try:
            raise KeyError(i) from err
        except KeyError as exc:
            err = exc
    assert err is not None
    _exc, text = cloudpickle.loads(g.error_payload(err, files={("x", 1, 0): "x.py"}))
    assert text.count("KeyError") >= 1200


def test_lambdas_that_differ_in_a_constant_keep_their_files(tmp_path: Any) -> None:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile("lam_b = lambda x: 10 / (x - 1)\n", str(tmp_path / "cell_B.py"), "exec"), ns)
    exec(compile("lam_c = lambda x: 10 / (x - 2)\n", str(tmp_path / "cell_C.py"), "exec"), ns)
    exec(
        compile("def both(x):\n    return lam_b(x + 1) + lam_c(x)\n", str(tmp_path / "cell_D.py"), "exec"), ns
    )
    for _ in range(2):
        assert 'cell_C.py", line 1, in <lambda>' in failing_text(ns["both"], 2)


def test_equal_code_in_two_files_keeps_each_its_file(tmp_path: Any) -> None:
    fns = []
    for name in ("a", "b"):
        ns: dict[str, Any] = {"__name__": "__main__"}
        exec(compile("def helper(x):\n    return 1 / x\n", str(tmp_path / f"helper_{name}.py"), "exec"), ns)
        exec(compile("def go(x):\n    return helper(x)\n", str(tmp_path / f"go_{name}.py"), "exec"), ns)
        fns.append(ns["go"])
    assert fns[0].__code__ == fns[1].__code__, "(equal code objects: the point of the test)"
    for name, fn in zip("ab", fns, strict=True):
        text = failing_text(fn, 0)
        assert f'go_{name}.py", line 2, in go' in text and f'helper_{name}.py", line 2' in text, text


def test_an_exception_group_of_the_exception_it_handles_names_every_file(tmp_path: Any) -> None:
    source = "def fail():\n    raise ValueError(1)\n"
    source += "def task(x):\n    try:\n        fail()\n    except ValueError as e:\n"
    source += "        raise ExceptionGroup('g', [e])\n"
    ns: dict[str, Any] = {"__name__": "__main__", "BOX": []}
    exec(compile(source, str(tmp_path / "grp.py"), "exec", dont_inherit=True), ns)
    text = failing_text(ns["task"], 0)
    assert text.count('grp.py", line 2, in fail') == 2, text  # (in the context, and in the group)


def test_an_ms_cache_evicts_nothing_for_a_function_too_large_to_keep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(g, "_LOADED", {})
    monkeypatch.setattr(g, "_LOADED_BYTES", [0])
    monkeypatch.setattr(g, "_LOADED_MAX_BYTES", 8000)
    for i in range(10):
        ns = script()
        ns["K"] = i
        g.decode_task(g.encode_task(ns["add_k"], (1,), {}) and g.encode_task(ns["add_k"], (1,), {}))
    kept = dict(g._LOADED)
    ns = script()
    ns["K"] = b"x" * 2000  # (immutable, so sealed: a pickle of ~2 kB, over 8000 / 8)
    for _ in range(3):
        g.decode_task(g.encode_task(ns["add_k"], (1,), {}) and g.encode_task(ns["add_k"], (1,), {}))
    assert kept == g._LOADED
    assert sum(map(len, g._LOADED)) == g._LOADED_BYTES[0]


def test_seals_of_functions_gone_stop_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The byte budget counts live seals only: a stable function stays
    sealed while lambdas made per call come and go."""
    seal._SEALS.clear()
    monkeypatch.setattr(seal, "_SEALED_BYTES", [0])
    monkeypatch.setattr(seal, "SEALS_MAX_BYTES", 200_000)
    live = script()["add_k"]
    for _ in range(2):
        g.encode_task(live, (1,), {})
    data = b"x" * 20_000
    for _ in range(30):
        fn = lambda: len(data)  # noqa: E731 - one per call, sealed, then dropped
        for _ in range(2):
            g.encode_task(fn, (), {})
    assert seal._SEALS.get(live) is not None and seal._SEALS[live].data is not None, "still sealed"


def test_a_name_that_leads_elsewhere_since_is_sent_by_value(pickles: list[Any]) -> None:
    """cloudpickle sends a function by name only while its module and name
    lead to it: once monkeypatched away, by value (the M would import the
    name anew)."""
    mod = types.ModuleType("gmpd_test_patchme")
    exec("def func(x):\n    return x + 1\n", mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        ns: dict[str, Any] = {"__name__": "__main__", "func": mod.__dict__["func"]}
        exec("def task(x):\n    return func(x)\n", ns)
        original = mod.__dict__["func"]
        for _ in range(2):
            assert run(ns["task"], 1) == 2
            assert g.encode_task(original, (1,), {})[:1] == b"R"
        made = len(pickles)
        mod.func = lambda x: 1000 * x  # type: ignore[attr-defined]
        assert run(ns["task"], 1) == 2
        assert len(pickles) == made + 1, "a new pickle"
        assert g.encode_task(original, (1,), {})[:1] == b"V", "not the cached by-name pickle"
    finally:
        del sys.modules[mod.__name__]


def test_every_seal_is_new_bytes(pickles: list[Any]) -> None:
    """An M never takes a new seal for one it loaded before."""
    ns = script()
    refs = []
    for k in (1, 2, 1):
        ns["K"] = k
        for _ in range(2):
            payload = g.encode_task(ns["add_k"], (0,), {})
        refs.append(payload[: 5 + int.from_bytes(payload[1:5], "little")])
    assert len(set(refs)) == 3


def test_an_argument_sharing_the_functions_globals_goes_with_it(pickles: list[Any]) -> None:
    """Pickled together, a task and a script function it is given share one
    globals dict on the M, as at each call."""
    ns: dict[str, Any] = {"__name__": "__main__", "X": 0}
    exec("def set_x():\n    global X\n    X = 5\ndef task(setter):\n    setter()\n    return X\n", ns)
    assert [run(ns["task"], ns["set_x"]) for _ in range(3)] == [5] * 3


def test_arguments_carrying_the_functions_globals_go_with_it(pickles: list[Any]) -> None:
    """Nested in a list, a partial, a bound method or an instance of a
    script's class, or through a helper's namespace: pickled together they
    share a globals dict on the M, so the task goes by value each call."""
    ns = script()
    other: dict[str, Any] = {"__name__": "__main__"}
    exec("def task(x):\n    return helper(0)\nclass Box:\n    def get(self):\n        return K\n", ns)
    exec("def reader():\n    return 0\n", other)
    ns["helper"] = other["reader"]
    for arg in (
        [ns["add_k"]],
        functools.partial(ns["add_k"], 1),
        ns["Box"]().get,
        ns["Box"](),
        other["reader"],
    ):
        assert [g.encode_task(ns["task"], (arg,), {})[:1] for _ in range(3)] == [b"V"] * 3, arg
    plain = [g.encode_task(ns["task"], ([1, "x"],), {})[:1] for _ in range(3)]
    assert plain == [b"R"] * 3, "plain data: sealed"


def test_a_module_gone_from_sys_modules_is_sent_by_value_again(pickles: list[Any]) -> None:
    """cloudpickle sends a module by name while sys.modules has it."""
    mod = types.ModuleType("gmpd_test_leaving")
    mod.K = 1  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    ns: dict[str, Any] = {"__name__": "__main__", "leaving": mod}
    exec("def get():\n    return leaving.K\n", ns)
    try:
        assert [g.encode_task(ns["get"], (), {})[:1] for _ in range(3)] == [b"V", b"R", b"R"]
    finally:
        del sys.modules[mod.__name__]
    mod.K = 5  # type: ignore[attr-defined]
    assert run(ns["get"]) == 5, "by value now, as cloudpickle sends it"


def test_an_argument_that_is_an_object_the_function_carries_goes_with_it(pickles: list[Any]) -> None:
    """Pickled together, a global (or default) and an argument that are one
    object stay one object on the M (``x is UNSET``); a sealed pickle
    would make them two."""
    ns: dict[str, Any] = {"__name__": "__main__", "UNSET": ("unset",), "NAME": "fast " + "mode"}
    exec(
        "def get(key, default=UNSET):\n    return default is UNSET\ndef named(y):\n    return y is NAME\n", ns
    )
    for _ in range(3):
        assert g.encode_task(ns["get"], ("k", ns["UNSET"]), {})[:1] == b"V"
        assert g.encode_task(ns["named"], (), {"y": ns["NAME"]})[:1] == b"V"
    equal = ("".join(["un", "set"]),)  # (made now: a literal would be the same constant, its string interned)
    assert g.encode_task(ns["get"], ("k", equal), {})[:1] == b"R", "an equal object is not the same"
