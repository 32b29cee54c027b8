"""The ROS-free core: a frame in, the expressions of its faces out.

Everything here runs without ROS and without torch (``test_runtime_imports``
checks every module): the node, ``wscfer-infer``, the benchmarks and the
training wing all use the same code.
"""
