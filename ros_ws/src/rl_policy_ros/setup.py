from glob import glob

from setuptools import find_packages, setup

package_name = "rl_policy_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="simreal maintainers",
    maintainer_email="maintainers@example.com",
    description="ROS 2 policy node and simulated-hardware node for ONNX robot policies.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "policy_node = rl_policy_ros.policy_node:main",
            "sim_hardware_node = rl_policy_ros.sim_hardware_node:main",
        ]
    },
)
