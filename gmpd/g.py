"""G: a task.  Its record and payload live in node shared memory (native/gtab.c).

A G handle (the uint32 the run queues carry) names an allocation in one P's
arena: ``handle >> 22`` is the P, the low 22 bits a 64-byte unit.  Only the
owner M of that P creates Gs there (``Node.g_new``) and reclaims freed ones;
any M on the node may read a G, run it, store its result (in the arena of
the P it holds) and free it.  Life of a G:

    g_new -> RUNNABLE -(taken from a queue)-> RUNNING -> DONE (result linked)
          -> FREE (by whoever consumed the result; reclaimed by the arena owner)
"""

from __future__ import annotations

import enum
import operator
import os
import pickle
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

import cloudpickle
import cloudpickle.cloudpickle as _cloudpickle_impl

from gmpd.errors import GmpdError

UNIT_BITS = 22


class GState(enum.IntEnum):
    """G record states (``enum gmpd_gstate`` in native/gtab.h)."""

    FREE = 0
    BUILDING = 1
    RUNNABLE = 2
    RUNNING = 3
    DONE = 4
    DATA = 5  # a result payload, not a G


def handle_p(handle: int) -> int:
    """The P whose arena holds G ``handle``."""
    return handle >> UNIT_BITS


# ---- task payloads ----------------------------------------------------------
#
# b"R" + 4-byte length + a function's pickle + dumps() of (args, kwargs).
#   The function part is the same bytes every time, so the client caches it
#   per function and the M caches the unpickled function per bytes.  It is
#   either the function's name (a plain importable function), or
#   cloudpickle's by-value pickle of a *sealed* function: one defined in
#   __main__, a lambda or a closure whose pickle cannot change while it and
#   everything it names stay the same objects (see _seal).
# b"V" + cloudpickle of (fn, args, kwargs): everything else, pickled anew at
#   every call, because cloudpickle captures globals and closure values as
#   they are at that moment and any of them could have changed in place.
#
# A script's functions are the common case: pickling one by value cost the
# client ~30 us a submit and the M as much to load it (a 10,000-task flood
# of a __main__ no-op ran at 17-20 k/s, the same function imported at
# 30-50 k/s).

_BY_REF: dict[Any, bytes] = {}  # function -> its by-reference pickle (small, bounded below)
# function -> (its by-value pickle, what it carries, the state it was pickled in)
_BY_VALUE: dict[Any, tuple[bytes, tuple[tuple[Any, tuple[str, ...]], ...], list[Any]]] = {}
_LOADED: dict[bytes, Any] = {}  # function pickle -> function, in the M
_LOADED_BYTES = [0]  # what _LOADED's keys hold, bounded by _LOADED_MAX_BYTES
_CACHE_MAX = 4096
_LOADED_MAX_BYTES = 64 << 20
_MISSING = object()  # a name the function's globals do not hold (a builtin)
_SEAL_DEPTH = 4  # helpers within helpers, and tuples within tuples, this deep at most


def _by_value_module(name: str | None) -> bool:
    """The user registered module ``name`` (or a package of it) with
    cloudpickle.register_pickle_by_value: its objects travel by value."""
    mods = _cloudpickle_impl._PICKLE_BY_VALUE_MODULES
    return bool(mods) and name is not None and any(name == m or name.startswith(m + ".") for m in mods)


def _importable(obj: Any) -> bool:
    """``obj`` is what its module and qualified name lead to in an
    importable module: pickle sends it by name, whatever it holds."""
    name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not name or name == "__main__" or not isinstance(qualname, str) or "<" in qualname:
        return False
    if _by_value_module(name):
        return False
    found: Any = sys.modules.get(name)
    for part in qualname.split("."):
        found = getattr(found, part, _MISSING)
    return found is obj


def _by_reference(fn: Any) -> bytes | None:
    """fn's pickle if it is a plain importable function (pickled by name)."""
    if not isinstance(fn, types.FunctionType):
        return None
    cached = _BY_REF.get(fn)
    if cached is not None:
        return cached
    if fn.__module__ in (None, "__main__") or fn.__closure__ or "<" in fn.__qualname__:
        return None  # lambdas, closures and __main__ functions travel by value
    if _by_value_module(fn.__module__):
        return None
    try:
        data = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    if len(_BY_REF) < _CACHE_MAX:
        _BY_REF[fn] = data
    return data


def _code_names(code: types.CodeType) -> set[str]:
    """Every name ``code`` and the code nested in it could look up as a
    global (a superset: attribute names are among co_names too)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _seal(fn: types.FunctionType, plan: list[tuple[Any, tuple[str, ...]]], depth: int = 0) -> bool:
    """Can ``fn``'s by-value pickle be reused while every object _state
    reads stays the same?  Yes when all it carries is immutable or goes by
    name.  ``plan`` gets (function, the global names its code uses) for fn
    and for each by-value function it names (sealed the same way)."""
    if fn.__kwdefaults__ or fn.__dict__ or depth > _SEAL_DEPTH:
        return False  # (both are mutable dicts; rare in task functions)
    names = tuple(sorted(_code_names(fn.__code__)))
    plan.append((fn, names))
    cells = tuple(_cell(c) for c in fn.__closure__ or ())
    values = [fn.__globals__.get(n, _MISSING) for n in names]
    return all(_sealed_value(v, plan, depth) for v in (*(fn.__defaults__ or ()), *cells, *values))


def _sealed_value(v: Any, plan: list[tuple[Any, tuple[str, ...]]], depth: int) -> bool:
    if v is _MISSING or v is None or v is Ellipsis or type(v) in (bool, int, float, complex, str, bytes):
        return True
    if type(v) in (tuple, frozenset):
        return depth < _SEAL_DEPTH and all(_sealed_value(x, plan, depth + 1) for x in v)
    if isinstance(v, types.ModuleType):
        name = v.__name__
        return sys.modules.get(name) is v and name != "__main__" and not _by_value_module(name)
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, type)) and _importable(v):
        return True
    if isinstance(v, types.FunctionType):
        # A by-value helper travels inside fn's pickle: seal it too, once
        # (recursion names fn itself).
        return any(v is f for f, _ in plan) or _seal(v, plan, depth + 1)
    return False  # a mutable or unknown object: it could change in place


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # not yet bound
        return _MISSING


def _state(plan: tuple[tuple[Any, tuple[str, ...]], ...]) -> list[Any]:
    """The objects a sealed function's pickle was made from: code,
    defaults, names, cell contents and the globals the code names, of the
    function and the helpers it carries."""
    out: list[Any] = []
    for f, names in plan:
        out += (f.__code__, f.__defaults__, f.__kwdefaults__, not f.__dict__, f.__name__, f.__qualname__)
        if f.__closure__:
            out += [_cell(c) for c in f.__closure__]
        get = f.__globals__.get
        out += [get(n, _MISSING) for n in names]
    return out


def _by_value(fn: Any) -> bytes | None:
    """fn's by-value pickle, made once while fn stays sealed (see _seal)."""
    if not isinstance(fn, types.FunctionType):
        return None
    entry = _BY_VALUE.get(fn)
    if entry is not None:
        data, plan, state = entry
        now = _state(plan)
        if len(now) == len(state) and all(map(operator.is_, now, state)):
            return data
    found: list[tuple[Any, tuple[str, ...]]] = []
    if not _seal(fn, found):
        _BY_VALUE.pop(fn, None)
        return None
    data = bytes(cloudpickle.dumps(fn))
    if len(_BY_VALUE) >= _CACHE_MAX:
        _BY_VALUE.clear()  # (functions made per call, each submitted once)
    plan = tuple(found)
    _BY_VALUE[fn] = (data, plan, _state(plan))
    return data


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` for another process of this cluster.

    The C pickler first (6x faster than cloudpickle for small values: 0.26
    vs 1.6 us for a tuple of one int, measured here); cloudpickle whenever
    the plain pickle would not load in an M: it fails (lambdas, local
    classes), it names ``__main__`` (the M's ``__main__`` is not the
    client's; cloudpickle sends those by value), or the user registered
    modules to travel by value."""
    if not _cloudpickle_impl._PICKLE_BY_VALUE_MODULES:
        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
        else:
            if b"__main__" not in data:
                return data
    return bytes(cloudpickle.dumps(obj))


def encode_task(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a G that calls ``fn(*args, **kwargs)``."""
    ref = _by_reference(fn) or _by_value(fn)
    if ref is None:
        return b"V" + bytes(cloudpickle.dumps((fn, args, kwargs)))
    return b"R" + len(ref).to_bytes(4, "little") + ref + dumps((args, kwargs))


def run_chunk(fn: Callable[..., Any], chunk: list[Any], star: bool) -> list[Any]:
    """The task of one ``Executor.map`` chunk.  Here, not in gmpd.executor,
    which Ms never import otherwise: the first chunk on every fresh M paid
    that import (10-25 ms here; noop_map's whole run is ~20 ms)."""
    return [fn(*args) for args in chunk] if star else [fn(x) for x in chunk]


# ---- preloading: what decoding a task imported, the template imports too ----
#
# A new M is forked from the node's template, so whatever the template has
# imported, every later M starts with.  An M that had to import modules to
# decode a task (the task's module, its arguments' classes) writes their
# names to the template's hint pipe (gmpd.m.run_payload calls hint_imports);
# the template imports them before its next fork (gmpd.node.template).  Ms
# started for a hand-off then run their first task at once: importing
# gmpd.bench alone took 35-50 ms per new M, with the P it was handed idle
# meanwhile (forkserver's preload, learned).

_hints = [-1]  # the template's hint pipe (write end, non-blocking), in an M


def set_hint_pipe(fd: int) -> None:
    os.set_blocking(fd, False)
    _hints[0] = fd


def hint_imports(before: int) -> None:
    """Tell the template the modules imported since sys.modules had ``before`` entries."""
    if _hints[0] < 0:
        return
    names = [n for n in list(sys.modules)[before:] if n != "__main__" and not n.startswith("_cloudpickle")]
    text = "".join(f"{n}\n" for n in names).encode()
    while text:  # in whole lines under PIPE_BUF, so each write is atomic
        cut = text.rfind(b"\n", 0, 4000) + 1 or len(text)
        try:
            os.write(_hints[0], text[:cut])
        except OSError:
            return  # (full, or the template is gone: it is only a hint)
        text = text[cut:]


def decode_task(payload: bytes) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """(fn, args, kwargs) from a payload made by :func:`encode_task`."""
    if payload[:1] == b"V":
        fn, args, kwargs = cloudpickle.loads(payload[1:])
        return fn, args, kwargs
    n = int.from_bytes(payload[1:5], "little")
    ref = payload[5 : 5 + n]
    fn = _LOADED.get(ref)
    if fn is None:
        fn = pickle.loads(ref)
        if len(_LOADED) < _CACHE_MAX and _LOADED_BYTES[0] + len(ref) <= _LOADED_MAX_BYTES:
            _LOADED[ref] = fn
            _LOADED_BYTES[0] += len(ref)
    args, kwargs = cloudpickle.loads(payload[5 + n :])
    return fn, args, kwargs


def error_payload(exc: BaseException, where: str = "") -> bytes:
    """An exception as a RAISED result: (exc, its traceback as text), pickled."""
    tb = "".join(traceback.format_exception(exc))
    text = f'\n"""\nTraceback in gmpd M {os.getpid()}{where}:\n{tb}"""'
    try:
        return bytes(cloudpickle.dumps((exc, text)))
    except Exception:
        fallback = GmpdError(f"task raised {type(exc).__name__}: {exc!r:.500} (and it could not be pickled)")
        return bytes(cloudpickle.dumps((fallback, text)))
