"""gmpd.config: defaults < configs/gmpd.toml (or $GMPD_CONFIG) < GMPD_* variables."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gmpd import config


def test_the_shipped_file_and_the_built_in_defaults_agree() -> None:
    assert tomllib.loads(config.REPO_FILE.read_text()) == config.DEFAULTS


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[sysmon]\nmax_us = 5000\n")
    got = config.load({"GMPD_CONFIG": str(conf), "GMPD_SYSMON_MIN_US": "50"})
    assert got["sysmon"]["max_us"] == 5000 and got["sysmon"]["min_us"] == 50
    assert got["m"]["max_ms_per_p"] == config.DEFAULTS["m"]["max_ms_per_p"]


@pytest.mark.parametrize(
    ("text", "env", "match"),
    [
        ("[sysmon]\nmax_us = 'fast'\n", {}, "must be an integer"),
        ("[sysmon]\nmax_usec = 1\n", {}, "unknown key sysmon.max_usec"),
        ("[gc]\nx = 1\n", {}, r"unknown section \[gc\]"),
        ("[sysmon\n", {}, "cannot read gmpd config"),
        ("", {"GMPD_M_MAX_MS_PER_P": "many"}, "expected an integer"),
    ],
)
def test_bad_configuration_says_what_is_wrong(
    tmp_path: Path, text: str, env: dict[str, str], match: str
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    with pytest.raises(config.ConfigError, match=match):
        config.load({"GMPD_CONFIG": str(conf), **env})


def test_max_ms_per_p_from_the_environment_bounds_the_m_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    import gmpd  # noqa: PLC0415

    monkeypatch.setenv("GMPD_M_MAX_MS_PER_P", "2")
    with gmpd.Executor(2) as ex:
        assert ex._cluster.nm is not None and ex._cluster.nm.node.nms == 2 * 2 + 1  # + sysmon's slot


def test_a_file_is_parsed_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ms are forked from the template with the file parsed already (two
    parses were ~1 ms of an M's start); an edited file is read again."""
    parses: list[str] = []
    real = tomllib.loads

    def counted(text: str) -> dict[str, object]:
        parses.append(text)
        return real(text)

    monkeypatch.setattr(tomllib, "loads", counted)
    path = tmp_path / "gmpd.toml"
    path.write_text("[m]\nmax_tasks = 3\n")
    env = {"GMPD_CONFIG": str(path)}
    assert config.load(env)["m"]["max_tasks"] == 3
    assert config.load(env)["m"]["max_tasks"] == 3
    assert len(parses) == 1
    path.write_text("[m]\nmax_tasks = 44\n")  # (another size, so another version even within one mtime tick)
    assert config.load(env)["m"]["max_tasks"] == 44
    assert len(parses) == 2
