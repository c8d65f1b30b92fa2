#!/usr/bin/env bash
# Entrypoint of the robot image (Dockerfile, target `deploy`): the ROS 2 policy node with a params file and an
# ONNX model mounted from outside. Extra arguments are passed on as ROS arguments, e.g.
#   docker run ... simreal:deploy -p joint_names:="[hinge]" -r __ns:=/robot1
# Settings (environment): PARAMS_FILE (default /config/policy_node.yaml), MODEL_PATH (default
# /models/policy.onnx; overrides the file's model_path), SIMREAL_PYTHON (the venv's interpreter).
set -euo pipefail

PARAMS_FILE="${PARAMS_FILE:-/config/policy_node.yaml}"
MODEL_PATH="${MODEL_PATH:-/models/policy.onnx}"
SIMREAL_PYTHON="${SIMREAL_PYTHON:-/opt/venv/bin/python}"

# The system rclpy and message packages are found through the ROS environment of the base image. Its setup
# script reads unset variables, so `set -u` is relaxed while it runs. Without ROS_DISTRO (outside the image,
# as in tests/test_docker.py) the interpreter's own rclpy is used.
if [[ -n "${ROS_DISTRO:-}" && -f "/opt/ros/${ROS_DISTRO}/setup.bash" ]]; then
  set +u
  # shellcheck disable=SC1090
  source "/opt/ros/${ROS_DISTRO}/setup.bash"
  set -u
fi

if [[ ! -f "${PARAMS_FILE}" ]]; then
  echo "simreal-policy-node: no params file at ${PARAMS_FILE}; mount one, e.g." \
       "-v \$PWD/policy_node.yaml:${PARAMS_FILE}:ro (template: ros_ws/src/rl_policy_ros/config/policy_node.yaml)" >&2
  exit 2
fi
if [[ ! -f "${MODEL_PATH}" ]]; then
  echo "simreal-policy-node: no model at ${MODEL_PATH}; mount the exported policy, e.g." \
       "-v \$PWD/policy.onnx:${MODEL_PATH}:ro (written by \`rlctl export RUN_DIR\`)" >&2
  exit 2
fi

exec "${SIMREAL_PYTHON}" -m rl_policy_ros.policy_node --ros-args \
  --params-file "${PARAMS_FILE}" -p "model_path:=${MODEL_PATH}" "$@"
