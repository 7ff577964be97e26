"""The work of examples/primes.py, in an importable module.

Task functions that live in a module travel to the Ms by name (pickled once,
cached on both sides); functions defined in ``__main__`` travel by value,
with cloudpickle, and are cached only while all they name is immutable or
importable (README: Functions in an importable module...).
"""

from __future__ import annotations

import random

import gmpd

SPLIT = 20_000


def count_primes(lo: int, hi: int) -> int:
    n = 0
    for k in range(max(lo, 2), hi):
        if k % 2 == 0:
            n += k == 2
            continue
        d = 3
        while d * d <= k:
            if k % d == 0:
                break
            d += 2
        else:
            n += 1
    return n


def count_split(lo: int, hi: int) -> int:
    """gmpd: split long ranges inside the task, fan out with gmpd.go."""
    if hi - lo <= SPLIT:
        return count_primes(lo, hi)
    mid = (lo + hi) // 2
    left, right = gmpd.go(count_split, lo, mid), gmpd.go(count_split, mid, hi)
    return int(left.result() + right.result())


def leaves(lo: int, hi: int) -> list[tuple[int, int]]:
    if hi - lo <= SPLIT:
        return [(lo, hi)]
    mid = (lo + hi) // 2
    return leaves(lo, mid) + leaves(mid, hi)


def make_ranges(tasks: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    ranges, lo = [], 1_000_000
    for _ in range(tasks):
        length = min(int(rng.lognormvariate(8.5, 1.2)), 400_000)
        ranges.append((lo, lo + length))
        lo += length
    return ranges
