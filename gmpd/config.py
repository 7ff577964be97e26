"""Configuration: defaults, then ``configs/gmpd.toml`` (or ``$GMPD_CONFIG``),
then ``GMPD_<SECTION>_<KEY>`` environment variables; arguments of
``gmpd.Executor`` win over all three (DESIGN §5).

Runs in: every gmpd process (each reads it once, at start).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from gmpd.errors import GmpdError

DEFAULTS: dict[str, dict[str, int]] = {
    "sysmon": {
        "min_us": 20,
        "max_us": 10_000,
        "idle_rounds": 50,
        "syscall_grace_ms": 10,
        "syscall_us": 500,
        "deep_sleep_ms": 100,
    },
    "m": {
        "max_ms_per_p": 8,
        "idle_exit_ms": 10_000,
        "max_tasks": 0,
        "max_rss_mb": 0,
        "rss_kill": 0,
        "import_grace_ms": 30_000,
        "max_threads": 8,
    },
    "coordinator": {"lease_ttl_ms": 5000},
    "client": {"offers": 1},
    "wire": {"max_message_mb": 1024},
}

REPO_FILE = Path(__file__).resolve().parent.parent / "configs" / "gmpd.toml"
FRAME_SLACK = 1 << 20  # a frame may carry this much beyond its largest payload (headers, ids)


class ConfigError(GmpdError, ValueError):
    """A configuration file or GMPD_* variable gmpd cannot use."""


def load(environ: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
    """The configuration in effect: defaults < file < environment."""
    env = dict(os.environ if environ is None else environ)
    conf = {section: dict(keys) for section, keys in DEFAULTS.items()}
    path = Path(env["GMPD_CONFIG"]) if env.get("GMPD_CONFIG") else REPO_FILE
    if env.get("GMPD_CONFIG") or path.exists():
        try:
            _merge(conf, _parsed(path), str(path))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read gmpd config {path}: {exc}") from None
    for section, keys in conf.items():
        for key in keys:
            var = f"GMPD_{section.upper()}_{key.upper()}"
            if var in env:
                try:
                    keys[key] = int(env[var])
                except ValueError:
                    raise ConfigError(f"{var}={env[var]!r}: expected an integer") from None
    return conf


_PARSED: dict[tuple[str, int, int], dict[str, Any]] = {}


def _parsed(path: Path) -> dict[str, Any]:
    """The file's TOML, parsed once per version of it: an M forked from the
    template finds it parsed (two parses were ~1-2 ms of an M's start)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    data = _PARSED.get(key)
    if data is None:
        data = _PARSED[key] = tomllib.loads(path.read_text())
    return data


def _merge(conf: dict[str, dict[str, int]], data: dict[str, Any], where: str) -> None:
    for section, keys in data.items():
        if section not in conf or not isinstance(keys, dict):
            raise ConfigError(f"{where}: unknown section [{section}]; known: {sorted(conf)}")
        for key, value in keys.items():
            if key not in conf[section]:
                raise ConfigError(f"{where}: unknown key {section}.{key}; known: {sorted(conf[section])}")
            if type(value) is not int:
                raise ConfigError(f"{where}: {section}.{key} must be an integer, not {value!r}")
            conf[section][key] = value


def max_frame_bytes() -> int:
    """ZMQ_MAXMSGSIZE for sockets that peers write to: the [wire] limit on a
    task or result, plus room for the frame around one."""
    return (load()["wire"]["max_message_mb"] << 20) + FRAME_SLACK


def too_large(what: str, nbytes: int, limit: int) -> str:
    """The error text for a task or result over the [wire] size limit."""
    return (
        f"{what} is {nbytes / 2**20:.1f} MiB pickled, over the {limit >> 20} MiB limit "
        f"([wire] max_message_mb in configs/gmpd.toml, or GMPD_WIRE_MAX_MESSAGE_MB)"
    )
