"""ROS 2 nodes that deploy an exported policy: a policy node and a simulated-hardware node."""
