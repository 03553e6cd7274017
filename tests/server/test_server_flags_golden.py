"""The public command line stays as it was: `--help` of every command, each flag's environment
variable, default and help, and every environment variable the parsers read.

The golden files in `golden/` were written by the code before the server was split into parts
(issue 21): a change to a flag must be a change to these files, made on purpose. To rewrite them
after such a change: `.venv/bin/python -m tests.server.test_server_flags_golden`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from modelserver import config

GOLDEN = Path(__file__).parent / "golden"
COMMANDS = ("serve", "fetch", "profile")
# argparse wraps help to the terminal's width: pin it.
COLUMNS = "100"
# Environments that reach every environment read of the parsers (S3_USE_HTTPS is read only for an
# S3_ENDPOINT without a scheme).
_ENVIRONS: dict[str, tuple[dict[str, str], ...]] = {
    "serve": ({},),
    "fetch": ({}, {"S3_ENDPOINT": "minio:9000"}),
    "profile": ({},),
}


class _Recording(Mapping[str, str]):
    """An environment that remembers which names were looked up."""

    def __init__(self, values: Mapping[str, str], seen: set[str]) -> None:
        self._values = dict(values)
        self._seen = seen

    def __getitem__(self, name: str) -> str:
        self._seen.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


# The least each command needs to parse to the end (where the environment-only settings are read).
_REQUIRED = {
    "serve": ["--model-uri", "/m.joblib"],
    "fetch": ["--model-uri", "/m.joblib", "--dest", "/d.joblib"],
    "profile": ["--model", "/m.joblib", "--data", "/d.csv", "--out", "/p.json"],
}


def _parse(command: str, environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parse = {
        "serve": config.parse_serve,
        "fetch": config.parse_fetch,
        "profile": config.parse_profile,
    }[command]
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def recording(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        parsers.append(self)
        return original(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = recording  # type: ignore[method-assign]
    try:
        parse(_REQUIRED[command], environ)
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    (parser,) = parsers
    return parser


def describe(command: str) -> dict[str, Any]:
    """Each flag in `--help` order (flags, environment variable, default, help) and the names of
    every environment variable the command's parser reads."""
    seen: set[str] = set()
    parser = _parse(command, _Recording({}, seen))
    for extra in _ENVIRONS[command][1:]:
        _parse(command, _Recording(extra, seen))
    flags = [
        {
            "flags": list(action.option_strings),
            "env": action.metavar,
            "default": repr(action.default),
            "help": action.help,
        }
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
    ]
    return {"flags": flags, "environment": sorted(seen)}


def help_text(command: str) -> str:
    argv = [sys.executable, "-m", "modelserver", *([] if command == "serve" else [command])]
    env = {**os.environ, "COLUMNS": COLUMNS}
    for name in ("MODEL_URI", "MODEL_NAME"):
        env.pop(name, None)
    return subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, env=env, check=True, timeout=60
    ).stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_unchanged(command: str) -> None:
    assert help_text(command) == (GOLDEN / f"help-{command}.txt").read_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_environment_and_defaults_are_unchanged(command: str) -> None:
    golden = json.loads((GOLDEN / f"flags-{command}.json").read_text())
    assert describe(command) == golden


def _write_golden() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for command in COMMANDS:
        (GOLDEN / f"help-{command}.txt").write_text(help_text(command))
        text = json.dumps(describe(command), indent=2) + "\n"
        (GOLDEN / f"flags-{command}.json").write_text(text)


if __name__ == "__main__":
    _write_golden()
