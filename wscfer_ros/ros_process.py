"""The life of a ROS executable: ``--help``, rclpy set-up, signals, spinning and an orderly end.

``--help`` (or ``-h``) before any ``--ros-args`` prints the parameters with
their defaults and descriptions, made from the same table the node declares
them from, and exits 0 without initialising ROS.  SIGINT and SIGTERM only
set a flag, so the node finishes the callback it is in and tears down in
order (no traceback on Ctrl-C); the exit status says whether it could start.
"""
import signal
import sys
import textwrap
import threading
from typing import Callable

import rclpy
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


def run_node(name: str, make_node: Callable[[], Node], start: Callable[[Node], bool], *,
             parameters: dict[str, tuple], summary: str, example: str, args=None,
             done: Callable[[Node], bool] = lambda node: False, fatal_errors: tuple = ()) -> int:
    """Make the node, ``start`` it, spin until a signal or ``done``; 0 on a clean end, 1 on a failed start.

    ``start`` returns False (after logging why) when the node cannot run; an
    exception in ``fatal_errors`` raised while starting or spinning is logged
    as one error line and also ends the process with status 1.  ``args`` is
    the whole command line (``sys.argv`` when None).  Asked for help, prints
    :func:`parameter_help` of ``parameters`` (name -> (default, description))
    and returns 0 before ROS is touched.
    """
    command_line = sys.argv if args is None else args
    user_args = command_line[1:command_line.index("--ros-args")] if "--ros-args" in command_line \
        else command_line[1:]
    if "--help" in user_args or "-h" in user_args:
        print(parameter_help(name, summary, parameters, example))
        return 0
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


def parameter_help(name: str, summary: str, parameters: dict[str, tuple], example: str) -> str:
    """The ``--help`` text: usage, ``summary``, every parameter as ``name:=default`` and its description."""
    lines = [f"usage: {name} [--help] [--ros-args [-p NAME:=VALUE]... [--params-file FILE] "
             f"[-r FROM:=TO]...]", "", textwrap.fill(summary, width=79), "",
             "parameters (NAME:=DEFAULT, then what it does):"]
    for parameter, (default, description) in parameters.items():
        lines.append(f"  {parameter}:={_ros_value(default)}")
        lines += textwrap.wrap(description, width=79, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines += ["", "Set parameters with --ros-args -p NAME:=VALUE (repeatable) or from a YAML",
              "file with --ros-args --params-file FILE; remap topics with -r FROM:=TO.",
              "For example:", f"  {example}"]
    return "\n".join(lines)


def _ros_value(value) -> str:
    """A default as it is written after ``-p name:=`` (YAML): true/false, and '' for an empty string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "''" if value == "" else str(value)
