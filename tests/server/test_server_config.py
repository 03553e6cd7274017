"""Serve configuration: flags over environment, worker count from the cgroup CPU limit, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelserver import config
from modelserver.process import options as process_options


def test_environment_configures_and_flags_win() -> None:
    environ = {
        "MODEL_URI": "file:///models/a.joblib",
        "MODEL_NAME": "from-env",
        "MODEL_FORMAT": "SKOPS",
        "MODEL_DIGEST": "sha256:" + "a" * 64,
        "PORT": "9000",
        "WORKERS": "3",
        "MAX_BATCH_WAIT_MS": "0",
        "MODEL_TRUSTED_TYPES": "sklearn.tree._tree.Tree, numpy.dtype",
    }
    settings = config.parse_serve(["--model-name", "from-flag", "--port", "9100"], environ)
    assert settings.model.uri == "file:///models/a.joblib"
    assert settings.model.name == "from-flag"
    assert settings.http.port == 9100
    assert settings.model.format == "skops"
    assert settings.model.digest == "sha256:" + "a" * 64
    assert settings.process.workers == 3
    assert settings.batching.max_batch_wait_ms == 0
    assert settings.model.trusted_types == ("sklearn.tree._tree.Tree", "numpy.dtype")


def test_defaults() -> None:
    settings = config.parse_serve(["--model-uri", "/m.joblib"], {})
    assert settings.http.port == 8080
    assert settings.model.format == "joblib"
    assert settings.model.name == "model"
    assert settings.process.workers == process_options.default_workers()
    assert settings.http.max_body_bytes == 8 * 1024 * 1024
    assert settings.process.termination_log == "/dev/termination-log"


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({}, "no model"),
        ({"MODEL_URI": "/m", "PORT": "http"}, "PORT='http'"),
        ({"MODEL_URI": "/m", "WORKERS": "0"}, "must be at least 1"),
        ({"MODEL_URI": "/m", "MODEL_FORMAT": "pickle"}, "joblib, skops"),
        ({"MODEL_URI": "/m", "ACCESS_LOG": "maybe"}, "true or false"),
    ],
)
def test_unusable_values_are_named(environ: dict[str, str], words: str) -> None:
    with pytest.raises(config.ConfigError, match=words):
        config.parse_serve([], environ)


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, None),
        ({}, None),
    ],
    ids=["v2-unlimited", "v2-1.5", "v2-0.5", "v1-2", "v1-unlimited", "none"],
)
def test_cpu_limit_from_cgroup(tmp_path: Path, files: dict[str, str], limit: float | None) -> None:
    assert process_options.cgroup_cpu_limit(_cgroup(tmp_path, files)) == limit


def test_workers_follow_the_cpu_limit_rounded_up(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert process_options.default_workers(_cgroup(tmp_path, {"cpu.max": "max 100000"})) == cpus
    assert process_options.default_workers(_cgroup(tmp_path, {"cpu.max": "50000 100000"})) == 1
    assert process_options.default_workers(_cgroup(tmp_path, {"cpu.max": "150000 100000"})) == min(
        2, cpus
    )


def test_bad_configuration_exits_2_with_a_termination_message(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    result = subprocess.run(
        [sys.executable, "-m", "modelserver", "--port", "99999"],
        env={**os.environ, "MODEL_URI": "/m.joblib", "TERMINATION_LOG": str(log)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid configuration" in log.read_text()
    assert "1..65535" in log.read_text()
