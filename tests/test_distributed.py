"""Ray backend (issue 8): PPO and SAC on a real two-node Ray cluster on loopback; a killed worker is replaced.

The cluster is two ``ray start`` nodes on one machine, each on its own loopback address (head 127.0.0.2,
worker 127.0.0.3), so Ray's node-to-node paths (object transfer between raylets, scheduling over nodes) are
exercised without a network. Every process of the test, the two ``ray start`` and the learner
(``rlctl train``), gets the same ``RAY_AUTH_MODE=token`` and a fresh ``RAY_AUTH_TOKEN``: Ray refuses
connections between processes that disagree, and no token file is written to the home folder.

Cleanup never uses ``ray stop``, which ends every Ray process on the machine by name (other people's
clusters too). Each ``ray start`` runs in a session of its own; the processes it leaves behind (GCS, raylet,
agents, workers) keep that session id and carry a marker variable in their environment, and the teardown
ends exactly those processes by pid and checks that none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
MARKER = "SIMREAL_RAY_TEST_CLUSTER"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _processes() -> Iterator[tuple[int, int, str]]:
    """(pid, session id, state) of every process (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        yield int(entry.name), int(fields[3]), fields[0]


def _has_marker(pid: int, value: str) -> bool:
    try:
        return f"{MARKER}={value}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    sessions: list[int]
    marker: str

    def pids(self) -> list[int]:
        """Live processes of this cluster: in a ``ray start`` session or carrying this cluster's marker."""
        me = os.getpid()
        return [
            pid for pid, sid, state in _processes()
            if pid != me and state != "Z" and (sid in self.sessions or _has_marker(pid, self.marker))
        ]

    def stop(self, grace_s: float = 3.0) -> list[int]:
        """SIGTERM every process of the cluster, SIGKILL what is left after ``grace_s``; the survivors."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        return self.pids()


@pytest.fixture
def ray_cluster() -> Iterator[Cluster]:
    """A head node on 127.0.0.2 and a worker node on 127.0.0.3, 2 logical CPUs each."""
    ray_cli = BIN / "ray"
    if not ray_cli.exists():
        pytest.fail("the `ray` CLI is missing: install the `ray` extra (it is in requirements.lock)")
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    marker = secrets.token_hex(8)
    env = {
        **os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), MARKER: marker,
        "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
    }
    port = _free_port(HEAD_IP)
    cluster = Cluster(f"{HEAD_IP}:{port}", env, [], marker)

    def start(*args: str) -> None:
        proc = subprocess.Popen(
            [str(ray_cli), "start", "--disable-usage-stats", "--num-cpus=2", f"--temp-dir={temp_dir}", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        cluster.sessions.append(proc.pid)  # session leader: its pid is the session id of what it starts
        out, _ = proc.communicate(timeout=90)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out[-3000:]}")

    try:
        start(
            "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", "--include-dashboard=false",
            f"--dashboard-port={_free_port(HEAD_IP)}", f"--ray-client-server-port={_free_port(HEAD_IP)}",
            f"--dashboard-agent-listen-port={_free_port(HEAD_IP)}",
        )
        start(
            f"--address={cluster.address}", f"--node-ip-address={WORKER_IP}",
            f"--dashboard-agent-listen-port={_free_port(WORKER_IP)}",
        )
        yield cluster
    finally:
        survivors = cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"Ray processes left behind: {survivors}"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ray_train_args(ray_cluster: Cluster, tmp_path: Path, overrides: list[str]) -> list[str]:
    """``rlctl train`` of the run folder ``tmp_path/run`` on the cluster with 2 workers and ``overrides``."""
    args = [str(BIN / "rlctl"), "train", "--runs", str(tmp_path), "--name", "run"]
    for o in overrides + [
        "distributed.backend=ray", f"distributed.address={ray_cluster.address}",
        f"distributed.node_ip_address={HEAD_IP}", "distributed.workers=2", "distributed.worker_timeout_s=60",
    ]:
        args += ["--set", o]
    return args


@contextlib.contextmanager
def _trainer(ray_cluster: Cluster, tmp_path: Path, overrides: list[str]) -> Iterator[subprocess.Popen]:
    """The ``rlctl train`` process of :func:`_ray_train_args`, output in ``tmp_path/train.log``; killed on exit
    if still running."""
    with (tmp_path / "train.log").open("w") as log:
        trainer = subprocess.Popen(
            _ray_train_args(ray_cluster, tmp_path, overrides), env=ray_cluster.env, stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield trainer
        finally:
            if trainer.poll() is None:
                trainer.kill()
                trainer.wait()


def _wait_for_iterations(trainer: subprocess.Popen, run_dir: Path, log_path: Path, n: int) -> None:
    """Until ``n`` iterations are in the run's metrics; the trainer must still be running."""
    deadline = time.monotonic() + 120
    while len(_read_jsonl(run_dir / "metrics.jsonl")) < n:
        assert trainer.poll() is None, f"training ended early:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no progress:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.05)


def _train_and_kill_a_worker(
    ray_cluster: Cluster, tmp_path: Path, overrides: list[str]
) -> tuple[Path, dict, list[dict], list[dict]]:
    """Train with ``overrides`` on the cluster, kill the worker on the second node after two iterations, wait
    for the end; checks the run finished after the kill and the worker was replaced. Returns the run folder,
    the killed worker's placement event, the metrics and the distributed events."""
    run_dir, log_path = tmp_path / "run", tmp_path / "train.log"
    with _trainer(ray_cluster, tmp_path, overrides) as trainer:
        # Wait for two finished iterations, then kill the worker on the second node mid-run.
        _wait_for_iterations(trainer, run_dir, log_path, 2)
        placed = [e for e in _read_jsonl(run_dir / "distributed_events.jsonl") if e["event"] == "placed"]
        assert {e["node_ip"] for e in placed} == {HEAD_IP, WORKER_IP}, placed  # workers on both nodes
        victim = next(e for e in placed if e["node_ip"] == WORKER_IP)
        killed_at = len(_read_jsonl(run_dir / "metrics.jsonl"))
        os.kill(victim["pid"], signal.SIGKILL)
        trainer.wait(timeout=90)
    output = log_path.read_text()
    assert trainer.returncode == 0, output[-3000:]
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    assert killed_at < len(metrics), "the worker was killed only after training had ended"
    assert sum(m["distributed/replaced"] for m in metrics) >= 1
    events = _read_jsonl(run_dir / "distributed_events.jsonl")
    lost = [e for e in events if e["event"] == "lost"]
    assert any(e["worker"] == victim["worker"] and e["pid"] == victim["pid"] for e in lost), events
    replacement = [e for e in events if e["event"] == "placed" and e["worker"] == victim["worker"]
                   and e["generation"] >= 1]
    assert replacement and replacement[0]["pid"] != victim["pid"], events
    return run_dir, victim, metrics, events


def test_ppo_on_two_node_cluster_survives_a_killed_worker(ray_cluster: Cluster, tmp_path: Path) -> None:
    iterations, num_envs, steps = 16, 4, 128
    overrides = [
        "seed=1", "env.task=pendulum_swingup", f"env.num_envs={num_envs}", f"algo.rollout_steps={steps}",
        f"runner.total_steps={iterations * num_envs * steps}", "runner.eval_every=1000", "runner.eval_episodes=1",
        "runner.checkpoint_every=1000",
    ]
    _, _, metrics, _ = _train_and_kill_a_worker(ray_cluster, tmp_path, overrides)
    assert [m["iteration"] for m in metrics] == list(range(1, iterations + 1)), "an iteration is missing"
    assert metrics[-1]["step"] == iterations * num_envs * steps
    assert all(m["steps_per_s"] > 0 for m in metrics)


def _offpolicy_overrides(algo: str, seed: int, iterations: int, iteration_steps: int, checkpoint_every: int) -> list:
    """A small off-policy run on the pendulum with 4 envs; the warm-up is the first iteration."""
    return [
        f"seed={seed}", f"algo.name={algo}", "env.task=pendulum_swingup", "env.num_envs=4",
        "policy.hidden_sizes=[32, 32]", f"algo.iteration_steps={iteration_steps}",
        f"algo.warmup_steps={iteration_steps}", "algo.batch_size=64",
        f"runner.total_steps={iterations * iteration_steps}", "runner.eval_every=1000", "runner.eval_episodes=1",
        f"runner.checkpoint_every={checkpoint_every}",
    ]


def test_sac_streams_transitions_on_two_node_cluster_and_survives_a_killed_worker(
    ray_cluster: Cluster, tmp_path: Path
) -> None:
    """Off-policy over Ray: workers on both nodes stream transitions into the learner's replay buffer; a killed
    worker is replaced, training continues and the buffer keeps growing by every iteration's transitions."""
    iterations, iteration_steps = 12, 200
    overrides = _offpolicy_overrides("sac", 1, iterations, iteration_steps, checkpoint_every=1000)
    run_dir, _, metrics, _ = _train_and_kill_a_worker(ray_cluster, tmp_path, overrides)
    assert [m["iteration"] for m in metrics] == list(range(1, iterations + 1)), "an iteration is missing"
    # Every iteration's transitions reached the replay buffer, the replaced worker's included.
    assert [m["replay/size"] for m in metrics] == [iteration_steps * i for i in range(1, iterations + 1)]
    assert all(m["updates"] == iteration_steps for m in metrics[1:])  # utd 1 after the warm-up iteration
    assert (run_dir / "checkpoints").is_dir()


def test_killed_learner_resumes_on_the_cluster_without_a_gap(ray_cluster: Cluster, tmp_path: Path) -> None:
    """A SIGKILLed off-policy learner (its Ray workers die with it) resumes from its last checkpoint: new
    workers are placed on the cluster and the metrics continue with no gap and no repeated iteration."""
    iterations, iteration_steps = 8, 100
    overrides = _offpolicy_overrides("td3", 2, iterations, iteration_steps, checkpoint_every=1)
    run_dir = tmp_path / "run"
    with _trainer(ray_cluster, tmp_path, overrides) as trainer:
        _wait_for_iterations(trainer, run_dir, tmp_path / "train.log", 3)
        trainer.send_signal(signal.SIGKILL)  # no chance to save anything or to stop the workers
        trainer.wait(timeout=30)
    killed_at = len(_read_jsonl(run_dir / "metrics.jsonl"))
    assert 3 <= killed_at < iterations, "the learner must be killed mid-way"
    placed_before = [e for e in _read_jsonl(run_dir / "distributed_events.jsonl") if e["event"] == "placed"]
    resumed = subprocess.run(
        [str(BIN / "rlctl"), "train", "--resume", str(run_dir)],
        env=ray_cluster.env, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == list(range(1, iterations + 1))  # no gap, no repeat
    assert [m["step"] for m in metrics] == [iteration_steps * i for i in range(1, iterations + 1)]
    placed = [e for e in _read_jsonl(run_dir / "distributed_events.jsonl") if e["event"] == "placed"]
    new_pids = {e["pid"] for e in placed[len(placed_before):]}
    assert len(new_pids) >= 2 and not new_pids & {e["pid"] for e in placed_before}  # fresh workers
