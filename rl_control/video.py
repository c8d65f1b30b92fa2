"""Render a short GIF of an ONNX policy in its task, offscreen.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it is imported, so each backend is tried in a
fresh subprocess: EGL first (GPU or surfaceless), then OSMesa (software). Where neither works the caller
gets a clear note instead of a video.

Run as ``python -m rl_control.video POLICY.onnx OUT.gif [--task ID] [--seconds S] [--seed N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BACKENDS = ("egl", "osmesa")


def render_gif(policy_path: str | Path, out_path: str | Path, task: str | None = None,
               seconds: float = 6.0, seed: int = 0) -> tuple[bool, str]:
    """Try each backend; returns (ok, backend used or the reasons it failed)."""
    reasons = []
    for backend in BACKENDS:
        env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
        cmd = [sys.executable, "-m", "rl_control.video", str(policy_path), str(out_path),
               "--seconds", str(seconds), "--seed", str(seed)] + (["--task", task] if task else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 and Path(out_path).is_file():
            return True, backend
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        reasons.append(f"{backend}: {last}")
    return False, "; ".join(reasons)


def _render(policy_path: str, out_path: str, task: str | None, seconds: float, seed: int) -> None:
    import imageio.v3 as iio
    import numpy as np

    from deploy.runtime import OnnxPolicy
    from sim.tasks import make_env

    policy = OnnxPolicy(policy_path)
    env = make_env(task or policy.metadata["task"], render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    policy.reset()
    dt = env.unwrapped.interface.policy_dt
    every = max(1, round(1.0 / (15 * dt)))  # about 15 frames per second of simulated time
    frames = []
    for step in range(int(seconds / dt)):
        obs, _, terminated, truncated, _ = env.step(policy.act(obs))
        if step % every == 0:
            frames.append(env.render())
        if terminated or truncated:
            obs, _ = env.reset()
            policy.reset()
    env.close()
    iio.imwrite(out_path, np.stack(frames), duration=int(1000 * every * dt), loop=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("policy")
    parser.add_argument("out")
    parser.add_argument("--task")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    _render(a.policy, a.out, a.task, a.seconds, a.seed)
