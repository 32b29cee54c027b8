"""The life of a ROS executable: rclpy set-up, signals, spinning and an orderly end.

SIGINT and SIGTERM only set a flag, so the node finishes the callback it is
in and tears down in order (no traceback on Ctrl-C); the exit status says
whether it could start.
"""
import signal
import threading
from typing import Callable

import rclpy
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


def run_node(name: str, make_node: Callable[[], Node], start: Callable[[Node], bool], *, args=None,
             done: Callable[[Node], bool] = lambda node: False, fatal_errors: tuple = ()) -> int:
    """Make the node, ``start`` it, spin until a signal or ``done``; 0 on a clean end, 1 on a failed start.

    ``start`` returns False (after logging why) when the node cannot run; an
    exception in ``fatal_errors`` raised while starting or spinning is logged
    as one error line and also ends the process with status 1.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        node = make_node()
    except InvalidParameterTypeException as error:
        get_logger(name).error(str(error))
        rclpy.shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if not start(node):
            return 1
        while not (stop.is_set() or done(node)):
            executor.spin_once(timeout_sec=0.1)
    except fatal_errors as error:
        node.get_logger().error(str(error))
        return 1
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()
    return 0
