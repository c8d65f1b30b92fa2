"""Policy node + simulated-hardware node, for a ROS 2 install that has `launch` (not the pip wheels).

ros2 launch rl_policy_ros closed_loop.launch.py model_path:=/path/to/policy.onnx [mode:=lockstep]
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    config = os.path.join(get_package_share_directory("rl_policy_ros"), "config")
    model_path = LaunchConfiguration("model_path")
    mode = LaunchConfiguration("mode")
    lockstep = PythonExpression(["'", mode, "' == 'lockstep'"])
    return LaunchDescription(
        [
            DeclareLaunchArgument("model_path", description="exported ONNX policy"),
            DeclareLaunchArgument("mode", default_value="realtime", description="realtime | lockstep"),
            Node(
                package="rl_policy_ros",
                executable="sim_hardware_node",
                name="sim_hardware",
                parameters=[os.path.join(config, "sim_hardware.yaml"), {"mode": mode}],
                output="screen",
            ),
            Node(
                package="rl_policy_ros",
                executable="policy_node",
                name="policy_node",
                parameters=[os.path.join(config, "policy_node.yaml"), {"model_path": model_path}],
                output="screen",
                condition=UnlessCondition(lockstep),
            ),
            Node(
                package="rl_policy_ros",
                executable="policy_node",
                name="policy_node",
                parameters=[
                    os.path.join(config, "policy_node.yaml"),
                    os.path.join(config, "closed_loop_lockstep.yaml"),
                    {"model_path": model_path},
                ],
                output="screen",
                condition=IfCondition(lockstep),
            ),
        ]
    )
