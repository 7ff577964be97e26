"""A module whose import makes every process forked after it exit at once
(a library that misbehaves after fork): preloaded into the M template, no
M lives to say Hello.  Imported only by tests/test_fault.py's start-failure test."""

import os

os.register_at_fork(after_in_child=lambda: os._exit(3))
