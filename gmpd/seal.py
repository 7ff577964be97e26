"""Sealed functions: a script's task function pickled by value once.

A function defined in ``__main__``, a lambda or a closure cannot travel by
name (an M's ``__main__`` is not the script), so cloudpickle sends it by
value, with the globals its code names and its closure's values as they
are at that moment.  That cost the client ~20-40 us a submit and the M as
much to load it; a 10,000-task flood of a ``__main__`` no-op ran at 15-24
k/s, and runs at 23-45 k/s sealed (an imported one: 30-59 k/s).

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
its arguments, once, as before.  A closure that writes its own cells
(``nonlocal``) is never sealed: loaded once on an M, it would carry the
write to the next task.  Nor is a task whose arguments carry a by-value
function of its globals or its helpers' (a script's function, or a method
of a script's class: pickled together they share one globals dict on the
M; encode_task sends those by value each call), nor one whose arguments
hold the very string, bytes, tuple or frozenset object it carries (one
object on the M when pickled together: ``default is UNSET``).  A by-name
object it carries is watched too: once its module and name lead
elsewhere (monkeypatched), cloudpickle would send it by value.

What does differ from a pickle at every submit, on purpose: a sealed
function is loaded once per M, so what a task stores in its globals
(``global x``) or on the function objects it carries (``f.calls += 1``)
is there for the next task on that M, as in a worker process of
``ProcessPoolExecutor``; and its code names the script's file where
cloudpickle says ``<dynamic-code>`` (``__code__.co_filename``, and
``traceback.format_exc()`` inside the task).

A function rebound at every submit (it names a loop variable of the
script) would be judged and pickled twice a submit and fill the M's cache:
after CHURN_LIMIT judgements in a row with fewer than two hits between
them, its next CHURN_SKIP submits go by value at each call unjudged.

cloudpickle also names all code it sends by value ``<dynamic-code>``, so a
remote traceback gave neither the file nor the line's text: the payload
carries each code object's file (:func:`code_files`, keyed by
:func:`code_key`), the M puts it back in a sealed function it loads
(:func:`relocate`, once: warnings and logging name the file too), and
:func:`format_exception` names the rest when a task fails (a task sent by
value at each call pays nothing unless it fails).

Runs in: the client and the Ms (encode_task, for ``gmpd.go``), and the Ms
(relocate).
"""

from __future__ import annotations

import dis
import itertools
import operator
import sys
import threading
import traceback
import types
import weakref
import zlib
from typing import Any

import cloudpickle
import cloudpickle.cloudpickle as _cloudpickle_impl

MISSING = object()  # a name the function's globals do not hold (a builtin)
SEAL_DEPTH = 4  # helpers within helpers, and tuples within tuples, this deep at most
SEALS_MAX = 4096  # functions remembered at most
SEALS_MAX_BYTES = 64 << 20  # and the pickles they hold
DYNAMIC_FILE = "<dynamic-code>"  # cloudpickle's co_filename for code sent by value

# (a by-value helper, its global names), or (an object, BY_NAME or BY_MODULE)
Plan = tuple[tuple[Any, tuple[str, ...]], ...]
BY_NAME: tuple[str, ...] = ("<by name>",)
BY_MODULE: tuple[str, ...] = ("<module>",)  # (a module, sent by name while sys.modules has it)
Files = dict[tuple[str, int, int], str]  # code_key -> co_filename


class Seal:
    """What we know of one function: its pickle (None: not sealed, or seen
    once), the helpers it carries, the state it was judged in, and how it
    has been going: cache hits since the last judgement, and judgements in
    a row that few hits followed (a global rebound at every submit)."""

    __slots__ = ("carried", "churn", "data", "helpers", "hits", "names", "skip", "state", "version")

    def __init__(
        self,
        data: bytes | None = None,
        helpers: Plan = (),
        state: list[Any] | None = None,
        version: tuple[Any, ...] = (),
        *,
        churn: int = 0,
        skip: int = 0,
        names: tuple[str, ...] = (),
        carried: frozenset[int] = frozenset(),
    ) -> None:
        self.data, self.helpers, self.state, self.version = data, helpers, state or [], version
        self.hits, self.churn, self.skip = 0, churn, skip
        self.names = names  # fn's own global names
        # The ids of what a pickler memoizes among what the pickle carries
        # (strings, bytes, tuples, frozensets: kept alive by ``state``).
        self.carried = carried


# function -> its Seal.  Weak: a lambda made per call goes with its seal
# (and a Seal holds no reference to its own function: see _state).
_SEALS: weakref.WeakKeyDictionary[types.FunctionType, Seal] = weakref.WeakKeyDictionary()
_SEALED_BYTES = [0]
_FILES: weakref.WeakKeyDictionary[types.CodeType, tuple[tuple[int, str], Files]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()  # (the byte count only: a seal is made outside it)
_SELF = object()  # stands for the function itself in its state
# Every pickle made is new bytes: an M never takes a new seal for one it
# loaded before (a name the pickle carries may lead elsewhere on the M since).
_GENERATION = itertools.count()
_PLAIN = (bool, int, float, complex, str, bytes)
_CONSTANTS = (MISSING, None, Ellipsis, NotImplemented, type(None))
CHURN_LIMIT = 3  # judgements in a row with fewer than 2 hits between them: then
CHURN_SKIP = 64  # this many submits go by value at each call without a judgement


def by_value_module(name: str | None) -> bool:
    """The user registered module ``name`` (or a package of it) with
    cloudpickle.register_pickle_by_value: its objects travel by value."""
    mods = _cloudpickle_impl._PICKLE_BY_VALUE_MODULES
    return bool(mods) and name is not None and any(name == m or name.startswith(m + ".") for m in mods)


def resolve(obj: Any) -> Any:
    """What ``obj``'s module and qualified name lead to now (MISSING: nothing)."""
    found: Any = sys.modules.get(getattr(obj, "__module__", None) or "")
    qualname = getattr(obj, "__qualname__", None)
    if type(qualname) is not str:
        return MISSING
    if "." not in qualname:
        return getattr(found, qualname, MISSING)
    for part in qualname.split("."):
        found = getattr(found, part, MISSING)
    return found


def importable(obj: Any) -> bool:
    """``obj`` is what its module and qualified name lead to in an
    importable module: pickle sends it by name, whatever it holds."""
    name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(name, str) or name == "__main__" or not isinstance(qualname, str) or "<" in qualname:
        return False
    return not by_value_module(name) and resolve(obj) is obj


def global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names ``code`` and the code nested in it read or write:
    exactly those cloudpickle puts in a by-value function's pickle."""
    return tuple(_cloudpickle_impl._extract_code_globals(code))


def by_value(fn: Any) -> bytes | None:
    """fn's by-value pickle, made once while fn stays sealed; None: pickle
    it with its arguments at this call (not a plain function, first seen,
    carrying something mutable, or rebound at every submit)."""
    if type(fn) is not types.FunctionType:
        return None
    seal = _SEALS.get(fn)
    if seal is None:
        _remember(fn, Seal())  # seen once: judged from the next submit
        return None
    if seal.skip:
        seal.skip -= 1
        return None
    if (
        seal.version
        and seal.version == _version(seal.version)
        and _same(_state(fn, seal.names, seal.helpers), seal.state)
    ):
        seal.hits += 1
        return seal.data  # (None: not sealable, and nothing it names has changed)
    return _make(fn, seal)


def _memoized(values: list[Any]) -> frozenset[int]:
    ids: set[int] = set()
    todo = list(values)
    while todo:
        v = todo.pop()
        if type(v) in (str, bytes) or (type(v) in (tuple, frozenset) and v and id(v) not in ids):
            ids.add(id(v))
            if type(v) in (tuple, frozenset):
                todo += v
    return frozenset(ids)


def carried_ids(fn: Any) -> frozenset[int]:
    """The objects fn's seal carries that a pickle of fn and its arguments
    together would share with the arguments (one object on the M, as
    ``x is DEFAULT`` sees it): an argument holding one goes with fn."""
    seal = _SEALS.get(fn) if type(fn) is types.FunctionType else None
    return seal.carried if seal is not None else frozenset()


def globals_ids(fn: Any) -> set[int]:
    """The ids of the globals dicts fn's seal carries: fn's and its
    by-value helpers' (encode_task: an argument sharing one goes with fn)."""
    if type(fn) is not types.FunctionType:
        return set()
    seal = _SEALS.get(fn)
    helpers = seal.helpers if seal is not None else ()
    return {id(fn.__globals__)} | {
        id(f.__globals__) for f, names in helpers if names is not BY_NAME and names is not BY_MODULE
    }


def _make(fn: types.FunctionType, old: Seal) -> bytes | None:
    churn = old.churn + 1 if old.version and old.hits < 2 else 0
    if churn >= CHURN_LIMIT:
        _remember(fn, Seal(skip=CHURN_SKIP))
        return None
    plan: list[tuple[Any, tuple[str, ...]]] = []
    sealed = _judge(fn, plan)
    helpers = tuple(plan[1:])  # (plan[0] is fn: a Seal must not hold its own key)
    names = global_names(fn.__code__)
    carried = _globals(fn, names, helpers)
    packages = any(type(v) is types.ModuleType and hasattr(v, "__path__") for v in carried)
    version, state = _version((packages,)), _state(fn, names, helpers)
    if not sealed:
        _remember(fn, Seal(None, helpers, state, version, churn=churn, names=names))
        return None
    data = bytes(cloudpickle.dumps((fn, code_files(fn), next(_GENERATION))))
    # Judged, recorded and pickled one after the other: another thread may
    # have rebound something in between.  Keep the pickle only if the
    # state still holds and is still sealed.
    if _judge(fn, []) and version == _version(version) and _same(_state(fn, names, helpers), state):
        # (what ``carried`` names is kept alive by state: fn's globals, cells and defaults)
        _remember(
            fn, Seal(data, helpers, state, version, churn=churn, names=names, carried=_memoized(carried))
        )
    return data


def _judge(fn: types.FunctionType, plan: list[tuple[Any, tuple[str, ...]]]) -> bool:
    try:
        return _seal(fn, plan, 0)
    except Exception:  # a global that fails isinstance (a lazy proxy): as before, by value at each call
        return False


def _globals(fn: types.FunctionType, names: tuple[str, ...], helpers: Plan) -> list[Any]:
    """The globals, cell contents and defaults fn and its helpers carry
    (where cloudpickle looks for packages whose imported submodules it
    sends, and what a pickle with the arguments could share with them)."""
    out = []
    for f, f_names in ((fn, names), *helpers):
        if f_names is BY_NAME or f_names is BY_MODULE:
            continue
        get = f.__globals__.get
        out += [get(n) for n in f_names]
        out += [_cell(c) for c in f.__closure__ or ()]
        out += f.__defaults__ or ()
    return out


def _remember(fn: types.FunctionType, seal: Seal) -> None:
    size = len(seal.data or b"")
    with _LOCK:
        old = _SEALS.get(fn)
        _SEALED_BYTES[0] -= len(old.data or b"") if old else 0
        if _SEALED_BYTES[0] + size > SEALS_MAX_BYTES:  # (seals of functions gone meanwhile count no more)
            _SEALED_BYTES[0] = sum(len(s.data or b"") for s in list(_SEALS.values()))
        if len(_SEALS) >= SEALS_MAX or _SEALED_BYTES[0] + size > SEALS_MAX_BYTES:
            _SEALS.clear()  # (functions made per call, each submitted a few times)
            _SEALED_BYTES[0] = 0
        _SEALS[fn] = seal
        _SEALED_BYTES[0] += size


def _seal(fn: types.FunctionType, plan: list[tuple[Any, tuple[str, ...]]], depth: int) -> bool:
    """Can fn's pickle be reused while every object _state reads stays the
    same?  ``plan`` gets (function, the global names its code uses) for fn
    and for each by-value helper it names (sealed the same way)."""
    names = global_names(fn.__code__)
    plan.append((fn, names))
    if fn.__kwdefaults__ is not None or fn.__dict__ or depth > SEAL_DEPTH or _stores_free(fn.__code__):
        return False  # (mutable dicts; rare in task functions; a cell it writes: see _stores_free)
    cells = [_cell(c) for c in fn.__closure__ or ()]
    values = [fn.__globals__.get(n, MISSING) for n in names]
    carried = (*(fn.__defaults__ or ()), *cells, *values, *fn.__annotations__.values())
    return all(_sealed_value(v, plan, depth) for v in carried)


def _stores_free(code: types.CodeType) -> bool:
    """Does the function write a variable of its closure (``nonlocal``)?
    Loaded once on an M, its cell would carry that write to the next task,
    where a pickle made at each submit starts from the client's value."""
    free = set(code.co_freevars)
    todo = [code]
    while free and todo:
        c = todo.pop()
        for ins in dis.get_instructions(c):
            if ins.opname in ("STORE_DEREF", "DELETE_DEREF") and ins.argval in free:
                return True
        todo += (k for k in c.co_consts if isinstance(k, types.CodeType))
    return False


def _sealed_value(v: Any, plan: list[tuple[Any, tuple[str, ...]]], depth: int) -> bool:
    if type(v) in _PLAIN or any(v is x for x in _CONSTANTS):
        return True
    if type(v) in (types.GenericAlias, types.UnionType):  # annotations: list[int], int | None
        v = (getattr(v, "__origin__", None), *v.__args__)
    if type(v) in (tuple, frozenset):
        return depth < SEAL_DEPTH and all(_sealed_value(x, plan, depth + 1) for x in v)
    if isinstance(v, types.ModuleType):
        name = v.__name__
        if not any(v is f for f, _ in plan):
            plan.append((v, BY_MODULE))  # (_state checks sys.modules still has it)
        return sys.modules.get(name) is v and name != "__main__" and not by_value_module(name)
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, type)) and importable(v):
        if not any(v is f for f, _ in plan):
            plan.append((v, BY_NAME))  # (_state checks its name still leads to it)
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


def _state(fn: types.FunctionType, names: tuple[str, ...], helpers: Plan) -> list[Any]:
    """The objects fn's pickle is made from: code, defaults, attributes,
    cell contents and the globals the code names, of fn and its helpers."""
    out: list[Any] = []
    for f, f_names in ((fn, names), *helpers):
        if f_names is BY_NAME:
            out.append(resolve(f))  # (cloudpickle sends it by value once its name leads elsewhere)
            continue
        if f_names is BY_MODULE:
            out.append(sys.modules.get(f.__name__))  # (and a module once sys.modules lost it)
            continue
        ann = f.__annotations__
        out += (f.__code__, f.__defaults__, f.__kwdefaults__, not f.__dict__, f.__name__, f.__qualname__)
        out += (f.__module__, f.__doc__, ann, *ann.keys(), *ann.values())
        if f.__closure__:
            out += [_cell(c) for c in f.__closure__]
        get = f.__globals__.get
        out += [get(n, MISSING) for n in f_names]
    # A recursive closure holds itself in a cell: a Seal must not hold it.
    return [_SELF if x is fn else x for x in out]


def _same(now: list[Any], then: list[Any]) -> bool:
    return len(now) == len(then) and all(map(operator.is_, now, then))


def _version(how: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a pickle also depends on beyond _state, compared by value: the
    modules registered to travel by value and, if the function names a
    package (``how[0]``: cloudpickle sends the package's submodules that
    are imported when it pickles), the imported modules' count and the
    last one imported."""
    mods = _cloudpickle_impl._PICKLE_BY_VALUE_MODULES
    imported: Any = None
    if how[0]:
        try:
            imported = (len(sys.modules), next(reversed(sys.modules)))
        except RuntimeError:  # another thread imports right now: equal to nothing
            imported = object()
    return (how[0], frozenset(mods) if mods else None, imported)


def code_key(code: types.CodeType) -> tuple[str, int, int]:
    """A code object, the same on the client and on the M (the CRC of its
    bytecode and constants tells apart two lambdas on line 1 of two
    notebook cells)."""
    consts = repr([_const_key(c) for c in code.co_consts]).encode()
    return code.co_qualname, code.co_firstlineno, zlib.crc32(consts, zlib.crc32(code.co_code))


def _const_key(c: Any) -> Any:
    """A constant, the same in every process (a frozenset's order follows
    string hashes, which differ per process)."""
    if isinstance(c, types.CodeType):
        return c.co_qualname
    if isinstance(c, frozenset):
        return sorted(repr(_const_key(x)) for x in c)
    if isinstance(c, tuple):
        return tuple(_const_key(x) for x in c)
    return repr(c)


def code_files(fn: Any) -> Files:
    """code_key -> co_filename of the code ``fn`` carries by value: its
    own, nested, and that of the by-value functions and classes it reaches
    (globals, cells, defaults, tuples, class dicts).  Kept per code object:
    a lambda made per call is the same code each time (a helper rebound
    since would only lose its file name in a traceback)."""
    if type(fn) is not types.FunctionType:
        return {}
    # (Code objects compare equal across files and namespaces: the entry
    # must be this function's, in its file, with its globals.)
    code, where = fn.__code__, (id(fn.__globals__), fn.__code__.co_filename)
    got = _FILES.get(code)
    if got is None or got[0] != where:
        got = _FILES[code] = (where, _find_files(fn))
    return got[1]


def _find_files(fn: types.FunctionType) -> Files:
    files: Files = {}
    todo: list[Any] = [fn]
    seen: set[int] = set()
    while todo:
        v = todo.pop()
        kind = type(v)  # (type(), not isinstance: a lazy proxy's __class__ may raise)
        if id(v) in seen or not (kind is types.FunctionType or kind is tuple or isinstance(kind, type)):
            continue
        seen.add(id(v))
        if kind is tuple:
            todo += v
        elif kind is types.FunctionType:
            if importable(v):
                continue
            codes = [v.__code__]
            while codes:
                code = codes.pop()
                files[code_key(code)] = code.co_filename
                codes += (c for c in code.co_consts if isinstance(c, types.CodeType))
            todo += (v.__globals__.get(n) for n in global_names(v.__code__))
            todo += (_cell(c) for c in v.__closure__ or ())
            todo += v.__defaults__ or ()
        elif kind is type and v is not type and not importable(v) and v.__module__ == "__main__":
            for member in vars(v).values():  # a script's class: its methods
                todo.append(getattr(member, "__func__", member))
                todo.append(getattr(member, "fget", None))
    return files


def relocate(fn: Any, files: Files) -> None:
    """Give the by-value functions reachable from ``fn`` (helpers in its
    globals, closures) their code's file names back (see code_files): once
    per sealed function an M loads, so that warnings and logging name the
    file too.  What it does not reach, format_exception names."""
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
        todo += f.__defaults__ or ()


def _relocated(code: types.CodeType, files: Files) -> types.CodeType:
    consts = tuple(_relocated(c, files) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    name = files.get(code_key(code), code.co_filename)
    return code.replace(co_filename=name, co_consts=consts)


def format_exception(exc: BaseException, files: Files | None) -> str:
    """``traceback.format_exception(exc)``, with the file of every frame in
    by-value code (``<dynamic-code>``) named from ``files``; the source
    line is then read from that file, if this host has it."""
    te = traceback.TracebackException.from_exception(exc, lookup_lines=False, compact=True)
    if files:
        _refile(te, exc, files)
    return "".join(te.format())


def _refile(te: traceback.TracebackException, exc: BaseException, files: Files) -> None:
    """Name the files of ``te``'s frames, and of the exceptions chained to
    it (cause, context, group members), from the frames' code objects."""
    todo: list[tuple[Any, Any]] = [(te, exc)]
    seen: set[int] = set()
    while todo:
        te_, exc_ = todo.pop()
        if te_ is None or exc_ is None or id(te_) in seen:
            continue
        seen.add(id(te_))
        codes = (frame.f_code for frame, _line in traceback.walk_tb(exc_.__traceback__))
        for summary, code in zip(te_.stack, codes, strict=False):
            if summary.filename == DYNAMIC_FILE:
                summary.filename = files.get(code_key(code), DYNAMIC_FILE)
        todo += ((te_.__cause__, exc_.__cause__), (te_.__context__, exc_.__context__))
        todo += zip(getattr(te_, "exceptions", None) or (), getattr(exc_, "exceptions", ()), strict=False)
