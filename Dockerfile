# syntax=docker/dockerfile:1
# Two images from one file (issue 8):
#   docker build --target train  -t simreal:train  .   Python 3.11, CPU torch, MuJoCo, the project; runs `rlctl`
#   docker build --target deploy -t simreal:deploy .   ROS 2 Kilted + numpy + onnxruntime + the policy node only
# In both, dependency manifests are copied and installed before any source file, so editing code rebuilds only
# the last, small layers. tests/test_docker.py lints this file (hadolint), checks every COPY source, and runs
# the deploy stage's install commands in a fresh venv.

# ---- train ----------------------------------------------------------------------------------------------
FROM python:3.11-slim AS train

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# OSMesa lets MuJoCo render the report's GIF offscreen without a GPU (rl_control/video.py tries EGL, then
# OSMesa). Debian's package versions are not pinned: they change with the base image's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libosmesa6 \
    && rm -rf /var/lib/apt/lists/*

# torch alone first, from the PyTorch CPU index: requirements.lock pins torch==2.13.0+cpu, which PyPI does not
# serve (its torch pulls several GB of CUDA). Installed before the lock, the lock's pin is already satisfied.
# Its own layer: the biggest download stays cached when the lock changes.
RUN python -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY requirements.lock /opt/simreal/
RUN pip install -r /opt/simreal/requirements.lock

# The project and its ROS 2 package (for `rlctl demo`'s closed loop), without dependencies: all are in the lock.
WORKDIR /opt/simreal
COPY pyproject.toml README.md ./
COPY sim ./sim
COPY rl_control ./rl_control
COPY deploy ./deploy
COPY configs ./configs
COPY ros_ws/src/rl_policy_ros ./ros_ws/src/rl_policy_ros
RUN pip install --no-deps . ./ros_ws/src/rl_policy_ros

# Runs and checkpoints go to /work/runs: mount a host folder there to keep them.
RUN useradd --create-home --uid 10001 simreal \
    && mkdir -p /work/runs \
    && chown -R simreal:simreal /work
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["rlctl"]
CMD ["--help"]

# ---- deploy ---------------------------------------------------------------------------------------------
# The robot image: the official ROS 2 Kilted base; its system rclpy and message packages are used (DESIGN.md
# section 5). No torch, no MuJoCo, no Gymnasium: the policy node needs deploy.runtime and sim.interface only.
FROM ros:kilted-ros-base AS deploy

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/opt/simreal

# Ubuntu's python3 has no venv module without python3-venv. Unpinned for the reason given in the train stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*

# --system-site-packages: the venv still sees the distribution's Python packages (rclpy's own dependencies);
# rclpy and the messages come from /opt/ros/$ROS_DISTRO through the ROS environment the entrypoint sources.
# The venv's numpy and onnxruntime take precedence over any system copy.
RUN python3 -m venv --system-site-packages /opt/venv
COPY requirements-deploy.txt /opt/simreal/
RUN /opt/venv/bin/pip install --no-deps -r /opt/simreal/requirements-deploy.txt

COPY ros_ws/src/rl_policy_ros /tmp/rl_policy_ros
RUN /opt/venv/bin/pip install --no-deps /tmp/rl_policy_ros \
    && rm -rf /tmp/rl_policy_ros

# The project's torch-free parts, importable through PYTHONPATH (the ROS setup script prepends to it).
COPY sim/__init__.py sim/interface.py /opt/simreal/sim/
COPY deploy/__init__.py deploy/runtime.py /opt/simreal/deploy/
COPY docker/deploy-entrypoint.sh /usr/local/bin/simreal-policy-node

# Mount points: the params file and the exported model (both read-only is fine).
RUN useradd --create-home --uid 10001 robot \
    && mkdir -p /config /models
USER 10001:10001
WORKDIR /home/robot
ENTRYPOINT ["/usr/local/bin/simreal-policy-node"]
