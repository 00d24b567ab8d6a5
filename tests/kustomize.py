"""Render a kustomization with whichever renderer this machine has: `kubectl kustomize`,
or `kustomize build` (on PATH, or the one `make install-kustomize` builds into the venv)."""

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

VENV_BIN = Path(sys.executable).parent


def command() -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize") or shutil.which("kustomize", path=str(VENV_BIN))
    # `make test` builds kustomize when neither is there; CI must not silently skip this.
    assert kustomize, "neither kubectl nor kustomize found: run `make install-kustomize`"
    return [kustomize, "build"]


def render(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [*command(), str(directory)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "kustomize warns"  # e.g. a deprecated field: fix it now
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
