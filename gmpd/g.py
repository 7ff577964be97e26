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
import io
import os
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

import cloudpickle
import cloudpickle.cloudpickle as _cloudpickle_impl

from gmpd import seal
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
#   either the function's name (a plain importable function), or the
#   by-value pickle of a sealed function with where its code was written
#   (gmpd.seal: a script's function, a lambda or a closure that carries
#   nothing mutable).
# b"V" + cloudpickle of (fn, args, kwargs, where fn's code was written):
#   everything else, pickled anew at every call, because cloudpickle
#   captures globals and closure values as they are at that moment.

_BY_REF: dict[Any, bytes] = {}  # function -> its by-reference pickle (small, bounded below)
_LOADED: dict[bytes, tuple[Any, seal.Files | None]] = {}  # function pickle -> (function, files), in the M
_LOADED_BYTES = [0]  # what _LOADED's keys hold
_CACHE_MAX = 4096
_LOADED_MAX_BYTES = 64 << 20


def _by_reference(fn: Any) -> bytes | None:
    """fn's pickle if it is a plain importable function (pickled by name)."""
    if not isinstance(fn, types.FunctionType):
        return None
    cached = _BY_REF.get(fn)
    if (
        cached is not None
        and seal.resolve(fn) is fn
        and not (_cloudpickle_impl._PICKLE_BY_VALUE_MODULES and seal.by_value_module(fn.__module__))
    ):
        # (seal.importable's checks that can change since the first time,
        # in their cheap form: 270 ns a hit instead of 480)
        return cached
    if fn.__closure__ or not seal.importable(fn):
        return None  # lambdas, closures, __main__ functions, modules registered by value: by value
    try:
        data = pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    if len(_BY_REF) < _CACHE_MAX:
        _BY_REF[fn] = data
    return data


def _load(ref: bytes) -> tuple[Any, seal.Files | None]:
    """The function an R payload names, and where its by-value code was
    written; loaded once per M (the oldest entry evicted first)."""
    got = _LOADED.get(ref)
    if got is not None:
        return got
    fn, files = pickle.loads(ref), None
    if type(fn) is tuple:  # (a by-value function, where its code was written, its seal's number)
        fn, files, _generation = fn
        seal.relocate(fn, files)
    got = (fn, files)
    if len(ref) > _LOADED_MAX_BYTES // 8:
        return got  # (too large to keep: nothing evicted for it)
    while _LOADED and (len(_LOADED) >= _CACHE_MAX or _LOADED_BYTES[0] + len(ref) > _LOADED_MAX_BYTES):
        oldest = next(iter(_LOADED))
        del _LOADED[oldest]
        _LOADED_BYTES[0] -= len(oldest)
    _LOADED[ref] = got
    _LOADED_BYTES[0] += len(ref)
    return got


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` for another process of this cluster.

    The C pickler first (6x faster than cloudpickle for small values: 0.26
    vs 1.6 us for a tuple of one int, measured here); cloudpickle whenever
    the plain pickle would not load in an M: it fails (lambdas, local
    classes), it names ``__main__`` (the M's ``__main__`` is not the
    client's; cloudpickle sends those by value), or the user registered
    modules to travel by value."""
    data = _plain(obj)
    return data if data is not None else bytes(cloudpickle.dumps(obj))


def _plain(obj: Any, memo: set[int] | None = None) -> bytes | None:
    """obj by the C pickler, if an M can load that (see dumps); ``memo``
    gets the ids of the objects it memoized."""
    if _cloudpickle_impl._PICKLE_BY_VALUE_MODULES:
        return None
    try:
        if memo is None:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            out = io.BytesIO()
            pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
            pickler.dump(obj)
            data = out.getvalue()
            memo.update(pickler.memo.copy())
    except Exception:
        return None
    return None if b"__main__" in data else data


def _dumps_args(obj: Any, watch: frozenset[int]) -> tuple[bytes, set[int], bool]:
    """dumps(obj); the ids of the globals dicts of the by-value functions
    it carried (classes' methods included), which share a globals dict
    with fn's on the M when pickled together; and whether it holds one of
    the objects ``watch`` names (then one object with fn's on the M)."""
    memo: set[int] | None = set() if watch else None  # (only when something is to be watched)
    data = _plain(obj, memo)
    if data is not None:
        return data, set(), bool(memo and watch & memo)
    out = io.BytesIO()
    pickler = cloudpickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dump(obj)
    shared = bool(watch) and bool(watch & pickler.memo.copy().keys())
    return out.getvalue(), set(getattr(pickler, "globals_ref", {})), shared


def encode_task(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a G that calls ``fn(*args, **kwargs)``."""
    ref = _by_reference(fn)
    if ref is not None:
        return b"R" + len(ref).to_bytes(4, "little") + ref + dumps((args, kwargs))
    ref = seal.by_value(fn)
    if ref is not None:
        data, shared, same = _dumps_args((args, kwargs), seal.carried_ids(fn))
        # Pickled together, as at each call, fn and its arguments share on
        # the M the globals dict of a by-value function both carry (one may
        # set what the other reads), and any object both hold (``x is
        # DEFAULT``).  Sealed, fn would have its own: such a task goes by
        # value.
        if not same and not (shared and shared & seal.globals_ids(fn)):
            return b"R" + len(ref).to_bytes(4, "little") + ref + data
    return b"V" + bytes(cloudpickle.dumps((fn, args, kwargs, seal.code_files(fn))))


def run_chunk(
    fn: Callable[..., Any], chunk: list[Any], star: bool, files: seal.Files | None = None
) -> list[Any]:
    """The task of one ``Executor.map`` chunk.  Here, not in gmpd.executor,
    which Ms never import otherwise: the first chunk on every fresh M paid
    that import (10-25 ms here; noop_map's whole run is ~20 ms).  ``files``
    names the files of a by-value ``fn``'s code (gmpd.seal), which travels
    as an argument here: its tracebacks then name them."""
    if files:
        seal.relocate(fn, files)
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


def decode_task(payload: bytes) -> tuple[Any, tuple[Any, ...], dict[str, Any], seal.Files | None]:
    """(fn, args, kwargs, where fn's by-value code was written) from a
    payload made by :func:`encode_task` (the last for error_payload)."""
    if payload[:1] == b"V":
        fn, args, kwargs, files = cloudpickle.loads(payload[1:])
        return fn, args, kwargs, files  # (not relocated: error_payload names the files, if it comes to that)
    n = int.from_bytes(payload[1:5], "little")
    fn, files = _load(payload[5 : 5 + n])
    args, kwargs = cloudpickle.loads(payload[5 + n :])
    return fn, args, kwargs, files


def error_payload(exc: BaseException, where: str = "", files: seal.Files | None = None) -> bytes:
    """An exception as a RAISED result: (exc, its traceback as text), pickled;
    ``files`` names the files of by-value code (decode_task)."""
    tb = seal.format_exception(exc, files)
    text = f'\n"""\nTraceback in gmpd M {os.getpid()}{where}:\n{tb}"""'
    try:
        return bytes(cloudpickle.dumps((exc, text)))
    except Exception:
        fallback = GmpdError(f"task raised {type(exc).__name__}: {exc!r:.500} (and it could not be pickled)")
        return bytes(cloudpickle.dumps((fallback, text)))
