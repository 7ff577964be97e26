"""Sealed functions: a script's task function pickled by value once.

A function defined in ``__main__``, a lambda or a closure cannot travel by
name (an M's ``__main__`` is not the script), so cloudpickle sends it by
value, with the globals its code names and its closure's values as they
are at that moment.  That cost the client ~20-40 us a submit and the M as
much to load it; a 10,000-task flood of a ``__main__`` no-op ran at 17-20
k/s, the same function imported at 30-50 k/s.

:func:`by_value` makes that pickle once and reuses it while doing so
cannot change what a task computes: the function is *sealed* when
everything its pickle carries is immutable (numbers, strings, bytes, None,
tuples and frozensets of them) or travels by name (modules, importable
functions and classes), or is itself a sealed by-value function (a helper
it names).  Each submit then compares, by identity, the objects the pickle
was made from (:func:`_state`: code, defaults, attributes, cell contents,
the globals the code names, for the function and every helper): a rebound
global, a new default or a changed closure variable makes a new pickle.
A function that carries anything mutable is pickled at every call, as
before, so that a change made in place reaches the next task (Dask and Ray
cache by function alone and then send stale globals).  A function is
sealed from its second submit on: a lambda made per call is pickled with
its arguments, once, as before.

cloudpickle also names all code it sends by value ``<dynamic-code>``, so a
remote traceback gave neither the file nor the line's text: the payload
carries each code object's file (:func:`code_files`) and the M puts it
back (:func:`relocate`).

Runs in: the client and the Ms (encode_task, for ``gmpd.go``), and the Ms
(relocate).
"""

from __future__ import annotations

import operator
import sys
import threading
import types
import weakref
from typing import Any

import cloudpickle
import cloudpickle.cloudpickle as _cloudpickle_impl

MISSING = object()  # a name the function's globals do not hold (a builtin)
SEAL_DEPTH = 4  # helpers within helpers, and tuples within tuples, this deep at most
SEALS_MAX = 4096  # functions remembered at most
SEALS_MAX_BYTES = 64 << 20  # and the pickles they hold
DYNAMIC_FILE = "<dynamic-code>"  # cloudpickle's co_filename for code sent by value

Plan = tuple[tuple[types.FunctionType, tuple[str, ...]], ...]


class Seal:
    """What we know of one function: its pickle (None: not sealed, or seen
    once), the helpers it carries, and the state it was judged in."""

    __slots__ = ("data", "helpers", "state", "version")

    def __init__(self, data: bytes | None, helpers: Plan, state: list[Any], version: tuple[Any, ...]) -> None:
        self.data, self.helpers, self.state, self.version = data, helpers, state, version


# function -> its Seal.  Weak: a lambda made per call goes with its seal.
_SEALS: weakref.WeakKeyDictionary[types.FunctionType, Seal] = weakref.WeakKeyDictionary()
_SEALED_BYTES = [0]
_FILES: weakref.WeakKeyDictionary[types.CodeType, dict[tuple[str, int], str]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()  # (the byte count only: a seal is made outside it)


def by_value_module(name: str | None) -> bool:
    """The user registered module ``name`` (or a package of it) with
    cloudpickle.register_pickle_by_value: its objects travel by value."""
    mods = _cloudpickle_impl._PICKLE_BY_VALUE_MODULES
    return bool(mods) and name is not None and any(name == m or name.startswith(m + ".") for m in mods)


def importable(obj: Any) -> bool:
    """``obj`` is what its module and qualified name lead to in an
    importable module: pickle sends it by name, whatever it holds."""
    name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(name, str) or name == "__main__" or not isinstance(qualname, str) or "<" in qualname:
        return False
    if by_value_module(name):
        return False
    found: Any = sys.modules.get(name)
    for part in qualname.split("."):
        found = getattr(found, part, MISSING)
    return found is obj


def global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names ``code`` and the code nested in it read or write:
    exactly those cloudpickle puts in a by-value function's pickle."""
    return tuple(_cloudpickle_impl._extract_code_globals(code))


def by_value(fn: Any) -> bytes | None:
    """fn's by-value pickle, made once while fn stays sealed; None: pickle
    it with its arguments at this call (not a plain function, first seen,
    or carrying something mutable)."""
    if not isinstance(fn, types.FunctionType):
        return None
    seal = _SEALS.get(fn)
    if seal is None:
        _remember(fn, Seal(None, (), [], ()))  # seen once: sealed from the next submit
        return None
    if seal.version and seal.version == _version() and _same(_state(fn, seal.helpers), seal.state):
        return seal.data  # (None: not sealable, and nothing it names has changed)
    return _make(fn)


def _make(fn: types.FunctionType) -> bytes | None:
    plan: list[tuple[types.FunctionType, tuple[str, ...]]] = []
    try:
        sealed = _seal(fn, plan, 0)
    except Exception:  # a global that fails isinstance (a lazy proxy): as before, by value at each call
        sealed = False
    helpers = tuple(plan[1:])  # (plan[0] is fn: a Seal must not hold its own key)
    version, state = _version(), _state(fn, helpers)
    if not sealed:
        _remember(fn, Seal(None, helpers, state, version))
        return None
    data = bytes(cloudpickle.dumps((fn, code_files(fn))))
    if version == _version() and _same(_state(fn, helpers), state):
        _remember(fn, Seal(data, helpers, state, version))  # (not if another thread changed it meanwhile)
    return data


def _remember(fn: types.FunctionType, seal: Seal) -> None:
    size = len(seal.data or b"")
    with _LOCK:
        old = _SEALS.get(fn)
        _SEALED_BYTES[0] -= len(old.data or b"") if old else 0
        if len(_SEALS) >= SEALS_MAX or _SEALED_BYTES[0] + size > SEALS_MAX_BYTES:
            _SEALS.clear()  # (functions made per call, each submitted a few times)
            _SEALED_BYTES[0] = 0
        _SEALS[fn] = seal
        _SEALED_BYTES[0] += size


def _seal(fn: types.FunctionType, plan: list[tuple[types.FunctionType, tuple[str, ...]]], depth: int) -> bool:
    """Can fn's pickle be reused while every object _state reads stays the
    same?  ``plan`` gets (function, the global names its code uses) for fn
    and for each by-value helper it names (sealed the same way)."""
    names = global_names(fn.__code__)
    plan.append((fn, names))
    if fn.__kwdefaults__ is not None or fn.__dict__ or depth > SEAL_DEPTH:
        return False  # (mutable dicts; rare in task functions)
    cells = [_cell(c) for c in fn.__closure__ or ()]
    values = [fn.__globals__.get(n, MISSING) for n in names]
    # (Annotations travel too, but only introspection reads them: _state
    # watches them by identity, and a class there may be mutable.)
    return all(_sealed_value(v, plan, depth) for v in (*(fn.__defaults__ or ()), *cells, *values))


def _sealed_value(v: Any, plan: list[tuple[types.FunctionType, tuple[str, ...]]], depth: int) -> bool:
    if v is MISSING or v is None or v is Ellipsis or type(v) in (bool, int, float, complex, str, bytes):
        return True
    if type(v) in (tuple, frozenset):
        return depth < SEAL_DEPTH and all(_sealed_value(x, plan, depth + 1) for x in v)
    if isinstance(v, types.ModuleType):
        name = v.__name__
        return sys.modules.get(name) is v and name != "__main__" and not by_value_module(name)
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, type)) and importable(v):
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
        return MISSING


def _state(fn: types.FunctionType, helpers: Plan) -> list[Any]:
    """The objects fn's pickle is made from: code, defaults, attributes,
    cell contents and the globals the code names, of fn and its helpers."""
    out: list[Any] = []
    for f, names in ((fn, None), *helpers):
        ann = f.__annotations__
        out += (f.__code__, f.__defaults__, f.__kwdefaults__, not f.__dict__, f.__name__, f.__qualname__)
        out += (f.__module__, f.__doc__, ann, *ann.keys(), *ann.values())
        if f.__closure__:
            out += [_cell(c) for c in f.__closure__]
        get = f.__globals__.get
        out += [get(n, MISSING) for n in (global_names(f.__code__) if names is None else names)]
    return out


def _same(now: list[Any], then: list[Any]) -> bool:
    return len(now) == len(then) and all(map(operator.is_, now, then))


def _version() -> tuple[Any, ...]:
    """What a pickle also depends on beyond _state, compared by value: the
    modules registered to travel by value, and (cloudpickle sends the
    submodules of a package a function names that are imported when it
    pickles) how many modules are imported."""
    mods = _cloudpickle_impl._PICKLE_BY_VALUE_MODULES
    return (True, frozenset(mods) if mods else None, len(sys.modules))


def code_files(fn: Any) -> dict[tuple[str, int], str]:
    """(co_qualname, co_firstlineno) -> co_filename of the code ``fn``
    carries by value: its own, nested, and its by-value helpers'.  Kept
    per code object: a lambda made per call is the same code each time
    (a helper rebound since only loses its file name in a traceback)."""
    code = getattr(fn, "__code__", None)
    if type(code) is not types.CodeType:
        return {}
    files = _FILES.get(code)
    if files is None:
        files = _FILES[code] = _find_files(fn)
    return files


def _find_files(fn: Any) -> dict[tuple[str, int], str]:
    files: dict[tuple[str, int], str] = {}
    todo, seen = [fn], set()
    while todo:
        f = todo.pop()
        if type(f) is not types.FunctionType or id(f) in seen or importable(f):
            continue  # (type(), not isinstance: a lazy proxy's __class__ may raise)
        seen.add(id(f))
        codes = [f.__code__]
        while codes:
            code = codes.pop()
            files[code.co_qualname, code.co_firstlineno] = code.co_filename
            codes += (c for c in code.co_consts if isinstance(c, types.CodeType))
        todo += (f.__globals__.get(n) for n in global_names(f.__code__))
        todo += (_cell(c) for c in f.__closure__ or ())
    return files


def relocate(fn: Any, files: dict[tuple[str, int], str]) -> None:
    """Give the by-value functions reachable from ``fn`` (helpers in its
    globals, closures) their code's file names back (see code_files)."""
    todo, seen = [fn], set()
    while files and todo:
        f = todo.pop()
        if type(f) is not types.FunctionType or id(f) in seen:
            continue
        seen.add(id(f))
        if f.__code__.co_filename != DYNAMIC_FILE:
            continue  # (an importable function: its globals are a whole module's)
        f.__code__ = _relocated(f.__code__, files)
        todo += f.__globals__.values()
        todo += (_cell(c) for c in f.__closure__ or ())


def _relocated(code: types.CodeType, files: dict[tuple[str, int], str]) -> types.CodeType:
    consts = tuple(_relocated(c, files) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    name = files.get((code.co_qualname, code.co_firstlineno), code.co_filename)
    return code.replace(co_filename=name, co_consts=consts)
