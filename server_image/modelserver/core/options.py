"""Flags with an environment variable of the same meaning, declared by the part that uses them.

Each part lists its flags as `Option`s next to the typed config it builds from them; `config.py`
assembles them into one parser per command. A flag given on the command line wins over the
environment. The environment is read once, when the parser is assembled, never at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class ConfigError(Exception):
    """A flag or environment variable has an unusable value."""


@dataclasses.dataclass(frozen=True)
class Option:
    """One flag, the environment variable that sets its default, and how both are converted."""

    flag: str
    env: str
    convert: Callable[[str], Any]
    default: object
    help: str


class Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of exiting, so errors reach the termination log."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def declare(
    parser: argparse.ArgumentParser, options: Iterable[Option], environ: Mapping[str, str]
) -> None:
    """Adds each option to the parser, its default taken from the environment when set there."""
    for option in options:
        raw = environ.get(option.env)
        value = option.default
        if raw is not None and raw != "":
            try:
                value = option.convert(raw)
            except (argparse.ArgumentTypeError, ValueError) as error:
                raise ConfigError(f"{option.env}={raw!r}: {error}") from None
        parser.add_argument(
            option.flag,
            type=option.convert,
            default=value,
            help=f"{option.help} (env {option.env})",
            metavar=option.env,
        )


# -- conversions, shared by the parts' flags ----------------------------------------------------


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def port(text: str) -> int:
    value = integer(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {value}")
    return value


def port_or_zero(text: str) -> int:
    return 0 if integer(text) == 0 else port(text)


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def env_boolean(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    """A true/false environment variable that has no flag."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return boolean(raw)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{name}={raw!r}: {error}") from None


def names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# -- the flags of every command that serves or fetches a model ---------------------------------

MODEL_URI = Option("--model-uri", "MODEL_URI", str, None, "where the model is")
MODEL_DIGEST = Option(
    "--model-digest", "MODEL_DIGEST", str, None, "expected sha256:<64 hex> of the file"
)
TERMINATION_LOG = Option(
    "--termination-log",
    "TERMINATION_LOG",
    str,
    DEFAULT_TERMINATION_LOG,
    "file that receives a one-line reason when the process fails",
)
LOG_LEVEL = Option("--log-level", "LOG_LEVEL", str.upper, "INFO", "DEBUG, INFO, WARNING or ERROR")
COMMON = (MODEL_URI, MODEL_DIGEST, TERMINATION_LOG, LOG_LEVEL)
