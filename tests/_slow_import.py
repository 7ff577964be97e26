"""A module that takes a while to import (a heavy library's import on a
fresh M, on a loaded machine): tests/test_fault.py's timeout tests.  How
long is read from the environment the Ms inherit, so a test can also make
the import hang."""

import os
import time

time.sleep(float(os.environ.get("GMPD_TEST_IMPORT_S", "0.8")))


def quick(x: int) -> int:
    return x + 1
