"""Render the chart in deploy/chart with Helm: on PATH, or the one `make install-helm` builds
into the venv."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.kustomize import VENV_BIN

CHART = Path(__file__).resolve().parent.parent / "deploy" / "chart" / "session-metrics"
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion). A Helm built with
# `go install` takes its default cluster version from client-go's module (1.20), which the
# chart refuses, so every offline render names one.
KUBE_VERSION = "1.29.0"

# Helm says once per symlink that it follows it: the chart reads the kit that way on purpose.
SYMLINK_NOTE = re.compile(r"^\S*walk\.go:\d+: found symbolic link in path: .*$\n?", re.MULTILINE)


def command() -> str:
    helm = shutil.which("helm") or shutil.which("helm", path=str(VENV_BIN))
    # `make test` builds helm when it is missing; CI must not silently skip this.
    assert helm, "helm not found: run `make install-helm`"
    return helm


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """helm with `args`, its stderr without the notes on the chart's symlinks."""
    done = subprocess.run(
        [command(), *args], check=False, capture_output=True, text=True, timeout=60
    )
    done.stderr = SYMLINK_NOTE.sub("", done.stderr)
    return done


def template_args(*values: Path, sets: tuple[str, ...] = (), chart: Path = CHART) -> list[str]:
    args = ["template", "session-metrics", str(chart), "--kube-version", KUBE_VERSION]
    for path in values:
        args += ["-f", str(path)]
    for assignment in sets:
        args += ["--set", assignment]
    return args


def render(*values: Path, sets: tuple[str, ...] = (), chart: Path = CHART) -> list[dict[str, Any]]:
    """The objects `helm template` gives for these values files and --set assignments."""
    done = run(*template_args(*values, sets=sets, chart=chart))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "helm warns"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def refuses(*values: Path, sets: tuple[str, ...] = ()) -> str:
    """The error `helm template` stops with for these values."""
    done = run(*template_args(*values, sets=sets))
    assert done.returncode != 0, done.stdout
    return done.stderr
