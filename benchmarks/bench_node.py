"""The node end to end: camera frames in, ``expressions`` out, across processes, as a table.

    python benchmarks/bench_node.py [--model FILE] [--seconds 10] [--rates 30 60 120 240 0]

Three processes, as on a robot: ``wscfer_node`` started with the shipped
parameters file and Fast DDS profile (shared-memory transport), a publisher
of frames, and this benchmark, which subscribes ``expressions`` and
``/diagnostics``.  ROS is isolated: a domain of its own, discovery on this
host only, a namespace of its own, logs in a temporary folder.

The publisher sends frames of ``woman2.mp4`` (one face), framed as a
640x480 and a 1280x720 camera would frame them (centre crop, resize), for
``--seconds`` at each ``--rates`` value (0 = as fast as it can), stamping
each image with the time it is published.  Latency is from that stamp to the arrival here of
the ``expressions`` message carrying the same stamp.  Counts per run:
published (by the publisher); processed and skipped (the node's
/diagnostics counters, before and after); lost = published - processed -
skipped (frames that never reached the node, or were rejected).  "Processed
Hz" counts from the first publication to the arrival of the last result;
"node CPU" is the node process's CPU time over the publishing time (100 % =
one core).
The node's resident memory is read from /proc after the warm-up and at the
end.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from common import (BenchmarkError, add_model_argument, argument_parser, check_positive, fit_frame,
                    machine_description, ms, percentiles, print_table, read_video, resolve_model)
from wscfer_ros.child_process import ChildProcess

VIDEO = "woman2.mp4"
SIZES = ("640x480", "1280x720")
STARTUP_TIMEOUT_S = 180.0      # MediaPipe import and warm-up on a busy 2-core machine
MATCH_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 30.0
NODE_STOP_TIMEOUT_S = 30.0
WARMUP_RATE_HZ = 30.0
# The node's input QoS with the shipped parameters ("sensor_data"): best effort.
IMAGE_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
RESULTS_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
COUNTERS = ("frames received", "frames processed", "frames skipped", "frames rejected", "frames failed")
# Lines of the publisher's stdout meant for the benchmark start with this;
# anything else a library prints there is ignored.
PROTOCOL = "wscfer-bench: "
TARGETS = ("targets (issue 5): at 30 Hz, 640x480, one face: p50 <= 10 ms, p99 <= 20 ms, no frame lost; "
           "under overload the node skips (and counts) rather than queues; resident memory <= 600 MB")


# ----------------------------------------------------------------------------- publisher process

def run_publisher(frames_path: str, topic: str, rate: float, seconds: float, stamps_path: str) -> int:
    """The publisher process: wait for the node, say "ready", publish on "go", report, exit on EOF.

    Talks to the benchmark over stdin/stdout, one line each way, so the
    benchmark can read the node's CPU time right before publishing starts
    and keep this process (and its shared-memory segments) alive until the
    node has taken every frame.
    """
    from wscfer_ros.messages import fill_image

    frames = np.load(frames_path, mmap_mode="r")
    rclpy.init()
    node = rclpy.create_node("wscfer_bench_camera")
    publisher = node.create_publisher(Image, topic, IMAGE_QOS)
    messages = []
    for frame in frames:
        message = Image()
        message.header.frame_id = "camera"
        fill_image(message, np.asarray(frame), "bgr8")
        messages.append(message)
    deadline = time.monotonic() + MATCH_TIMEOUT_S
    while publisher.get_subscription_count() < 1:
        if time.monotonic() > deadline:
            print(f"{PROTOCOL}error: no subscriber on {topic} after {MATCH_TIMEOUT_S:.0f} s", flush=True)
            return 1
        time.sleep(0.01)
    print(f"{PROTOCOL}ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1

    stamps = []
    count = max(1, round(rate * seconds)) if rate > 0 else None
    started = time.perf_counter()
    while (len(stamps) < count) if count is not None else (time.perf_counter() - started < seconds):
        if rate > 0:
            delay = started + len(stamps) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        message = messages[len(stamps) % len(messages)]
        stamp = time.time_ns()
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        publisher.publish(message)
        stamps.append(stamp)
    if rate > 0:
        # The run lasts count periods, the last frame's included.
        time.sleep(max(0.0, started + count / rate - time.perf_counter()))
    duration = time.perf_counter() - started
    np.save(stamps_path, np.array(stamps, np.int64))
    print(PROTOCOL + json.dumps({"published": len(stamps), "duration_s": duration}), flush=True)
    sys.stdin.read()   # EOF: the benchmark has what it needs
    node.destroy_node()
    rclpy.shutdown()
    return 0


# ----------------------------------------------------------------------------- benchmark process

@dataclass
class Observer:
    """Arrival times of ``expressions`` by image stamp, and the node's latest diagnostics."""

    hardware_id: str
    arrivals_ns: dict[int, int] = field(default_factory=dict)
    diagnostics: list[tuple[float, dict[str, str]]] = field(default_factory=list)   # (arrival, values)

    def on_expressions(self, message: String) -> None:
        arrived = time.time_ns()
        stamp = json.loads(message.data)["stamp"]
        self.arrivals_ns[stamp["sec"] * 1_000_000_000 + stamp["nanosec"]] = arrived

    def on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.hardware_id == self.hardware_id:
                self.diagnostics.append((time.monotonic(), {kv.key: kv.value for kv in status.values}))

    def counters(self, after: float = 0.0) -> list[dict[str, int]]:
        """The node's frame counters of every diagnostics message that arrived after ``after``."""
        return [{name: int(values[name]) for name in COUNTERS}
                for arrival, values in list(self.diagnostics) if arrival > after]


class NodeUnderTest(ChildProcess):
    """``wscfer_node`` in a child process, with its log in ``log_path``."""

    def __init__(self, ros_args: list[str], env: dict[str, str], log_path: Path):
        super().__init__("node", ros_args, log_path, env)

    def check_running(self) -> None:
        if not self.running():
            raise BenchmarkError(f"wscfer_node exited with {self.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def memory_mb(self) -> tuple[float, float]:
        """Resident memory now and its peak (VmRSS, VmHWM), in MB."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value
        return tuple(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))

    def cpu_seconds(self) -> float:
        # utime and stime: fields 14 and 15 of /proc/<pid>/stat, counted after the ")" of the name.
        after_name = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RunResult:
    published: int
    duration_s: float      # publishing
    span_s: float          # first publication to the last result's arrival
    processed: int
    skipped: int
    lost: int
    latencies_ms: list[float]
    node_cpu_s: float


class ProtocolLines:
    """The protocol lines of a child's unbuffered stdout, read with a timeout."""

    def __init__(self, process: subprocess.Popen):
        self._fd = process.stdout.fileno()
        self._buffer = b""

    def next(self, timeout: float) -> str | None:
        """The next line starting with PROTOCOL, without it; None on timeout or end of output."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if text.startswith(PROTOCOL):
                    return text[len(PROTOCOL):]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk


class Bench:
    """The benchmark's ROS side: the node under test, the observer, and one publisher per run."""

    def __init__(self, args, model: Path, work: Path):
        from wscfer_ros.resources import fastdds_profile, params_file

        namespace = f"wscfer_bench_{os.getpid()}"
        self.work = work
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(args.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                        ROS_LOG_DIR=str(work / "ros_log"), FASTDDS_DEFAULT_PROFILES_FILE=str(fastdds_profile()),
                        PYTHONUNBUFFERED="1")
        # This process's own participant reads the same settings at rclpy.init.
        os.environ.update(self.env)
        self.image_topic = f"/{namespace}/image"
        node_args = ["--params-file", str(params_file()), "-p", f"model_path:={model}", "-r", f"__ns:=/{namespace}"]
        for param in args.node_param:
            node_args += ["-p", param]
        self.node = NodeUnderTest(node_args, self.env, work / "node.log")
        try:
            self._start_observer(namespace)
        except Exception:
            self.node.stop(NODE_STOP_TIMEOUT_S)
            raise

    def _start_observer(self, namespace: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.ros_node = rclpy.create_node("wscfer_bench_observer", context=self.context)
        self.observer = Observer(hardware_id=f"/{namespace}/wscfer_node")
        self.results = self.ros_node.create_subscription(String, f"/{namespace}/expressions",
                                                         self.observer.on_expressions, RESULTS_QOS)
        self.ros_node.create_subscription(DiagnosticArray, "/diagnostics", self.observer.on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.ros_node)
        self._spinning = threading.Event()
        self._spinning.set()
        self._spin_thread = threading.Thread(target=self._spin, daemon=True)
        self._spin_thread.start()

    def _spin(self) -> None:
        while self._spinning.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def wait_until(self, condition, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.node.check_running()
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{what}: not after {timeout:.0f} s; node log:\n{self.node.log_tail()}")
            time.sleep(0.02)

    def wait_for_node(self) -> None:
        self.wait_until(lambda: self.results.get_publisher_count() >= 1 and self.observer.diagnostics,
                        "wscfer_node configured and publishing diagnostics", STARTUP_TIMEOUT_S)

    def run(self, frames_path: Path, rate: float, seconds: float) -> RunResult:
        stamps_path = self.work / "stamps.npy"
        with open(self.work / "publisher.log", "ab") as log:
            publisher = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--publish", str(frames_path), "--topic",
                 self.image_topic, "--rate", str(rate), "--seconds", str(seconds), "--stamps", str(stamps_path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.env, bufsize=0)
        lines = ProtocolLines(publisher)
        try:
            self._expect(lines, "ready", MATCH_TIMEOUT_S + 60)
            before = self.observer.counters()[-1]
            cpu_before = self.node.cpu_seconds()
            try:
                publisher.stdin.write(b"go\n")
            except BrokenPipeError:
                raise BenchmarkError("the publisher exited before publishing") from None
            report = json.loads(self._expect(lines, None, seconds + 120))
            cpu_s = self.node.cpu_seconds() - cpu_before
            after = self.settled_counters(time.monotonic())
        finally:
            with contextlib.suppress(BrokenPipeError):   # the publisher may have died
                publisher.stdin.close()
            try:
                publisher.wait(30)
            except subprocess.TimeoutExpired:
                publisher.kill()
                publisher.wait()
        stamps = np.load(stamps_path).tolist()
        matched = [(stamp, self.observer.arrivals_ns[stamp]) for stamp in stamps
                   if stamp in self.observer.arrivals_ns]
        latencies = [(arrival - stamp) / 1e6 for stamp, arrival in matched]
        # Under overload the node is still working when the publisher stops.
        last_arrival = max((arrival for _, arrival in matched), default=stamps[0])
        span_s = max(report["duration_s"], (last_arrival - stamps[0]) / 1e9)
        processed = after["frames processed"] - before["frames processed"]
        skipped = after["frames skipped"] - before["frames skipped"]
        return RunResult(report["published"], report["duration_s"], span_s, processed, skipped,
                         report["published"] - processed - skipped, latencies, cpu_s)

    def _expect(self, lines: ProtocolLines, expected: str | None, timeout: float) -> str:
        """The publisher's next protocol line (which must be ``expected`` when given)."""
        line = lines.next(timeout)
        if line is None or (expected and line != expected) or line.startswith("error"):
            log = (self.work / "publisher.log").read_text(errors="replace")[-2000:]
            raise BenchmarkError(f"publisher said {line!r} instead of {expected or 'its report'}:\n{log}")
        return line

    def settled_counters(self, published_at: float) -> dict[str, int]:
        """The node's counters once it is idle: two diagnostics after ``published_at`` agree, none pending."""
        def settled() -> bool:
            counters = self.observer.counters(after=published_at)
            if len(counters) < 2 or counters[-1] != counters[-2]:
                return False
            last = counters[-1]
            return last["frames received"] == sum(last[name] for name in COUNTERS[1:])

        self.wait_until(settled, "wscfer_node idle after the publisher finished", SETTLE_TIMEOUT_S)
        return self.observer.counters(after=published_at)[-1]

    def close(self) -> None:
        self._spinning.clear()
        self._spin_thread.join()
        self.executor.shutdown()
        self.ros_node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.node.stop(NODE_STOP_TIMEOUT_S)


def prepare_frames(work: Path, sizes: list[tuple[int, int]], distinct: int) -> dict[tuple[int, int], Path]:
    """``distinct`` frames spread over the video, framed at each size, saved as .npy for the publisher."""
    frames = read_video(VIDEO)
    picked = [frames[index] for index in np.linspace(0, len(frames) - 1, min(distinct, len(frames))).astype(int)]
    paths = {}
    for width, height in sizes:
        paths[(width, height)] = work / f"frames_{width}x{height}.npy"
        np.save(paths[(width, height)], np.stack([fit_frame(frame, width, height) for frame in picked]))
    return paths


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def table_row(size: tuple[int, int], rate: float, result: RunResult) -> list[str]:
    p50, p95, p99 = percentiles(result.latencies_ms) if result.latencies_ms else (float("nan"),) * 3
    return [f"{size[0]}x{size[1]}", f"{rate:g}" if rate else "max", f"{result.published / result.duration_s:.1f}",
            f"{result.processed / result.span_s:.1f}", result.published, result.processed, result.skipped,
            result.lost, ms(p50), ms(p95), ms(p99), f"{100 * result.node_cpu_s / result.duration_s:.0f} %"]


def summary(size: tuple[int, int], runs: list[tuple[float, RunResult]]) -> str:
    """The highest rate with every frame processed, and the node's throughput under the heaviest load."""
    clean = [result.published / result.duration_s for _, result in runs if result.skipped == result.lost == 0]
    heaviest = max(runs, key=lambda run: run[1].published / run[1].duration_s)[1]
    text = f"{size[0]}x{size[1]}: "
    text += (f"every frame processed up to {max(clean):.0f} Hz offered" if clean
             else "no measured rate had every frame processed")
    return text + (f"; at {heaviest.published / heaviest.duration_s:.0f} Hz offered the node processed "
                   f"{heaviest.processed / heaviest.span_s:.0f} Hz, skipped {heaviest.skipped} and lost "
                   f"{heaviest.lost} of {heaviest.published}")


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    add_model_argument(parser)
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per run (default 10)")
    parser.add_argument("--rates", type=float, nargs="+", default=[30, 60, 120, 240, 0],
                        help="publishing rates in Hz, 0 = as fast as possible (default: 30 60 120 240 0)")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size(size) for size in SIZES],
                        help="frame sizes (default: 640x480 1280x720)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help=f"seconds at {WARMUP_RATE_HZ:g} Hz per size before measuring (default 2)")
    parser.add_argument("--distinct", type=int, default=30,
                        help=f"distinct frames of {VIDEO} the publisher cycles through (default 30)")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter, e.g. threads:=1 (repeatable)")
    parser.add_argument("--domain-id", type=int, default=1 + os.getpid() % 100,
                        help="ROS_DOMAIN_ID of the run (default: derived from the process id)")
    # The publisher process runs this script again with these options.
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)

    parser.add_argument("--stamps", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish:
        return run_publisher(args.publish, args.topic, args.rate, args.seconds, args.stamps)
    if not args.seconds > 0:
        parser.error("--seconds must be positive")
    check_positive(parser, "--distinct", args.distinct)
    if any(rate < 0 for rate in args.rates):
        parser.error("--rates must be >= 0 (0 = as fast as possible)")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")

    with tempfile.TemporaryDirectory(prefix="wscfer-bench-node-") as folder:
        work = Path(folder)
        bench = None
        try:
            model = resolve_model(args.model)
            frame_files = prepare_frames(work, args.sizes, args.distinct)
            bench = Bench(args, model, work)
            print(machine_description())
            print(f"model: {model}; node: shipped parameters file"
                  f"{' + ' + ', '.join(args.node_param) if args.node_param else ''}, Fast DDS profile "
                  f"{bench.env['FASTDDS_DEFAULT_PROFILES_FILE']}, ROS domain {args.domain_id}; "
                  f"{args.seconds:g} s per run, frames of {VIDEO} ({args.distinct} distinct)\n", flush=True)
            bench.wait_for_node()
            for size in args.sizes:
                if args.warmup:
                    bench.run(frame_files[size], WARMUP_RATE_HZ, args.warmup)
            memory_warm = bench.node.memory_mb()[0]
            rows, summaries = [], []
            for size in args.sizes:
                runs = [(rate, bench.run(frame_files[size], rate, args.seconds)) for rate in args.rates]
                rows += [table_row(size, rate, result) for rate, result in runs]
                summaries.append(summary(size, runs))
            memory_end, memory_peak = bench.node.memory_mb()
        except BenchmarkError as error:
            print(f"bench_node: error: {error}", file=sys.stderr)
            return 1
        finally:
            if bench is not None:
                bench.close()

    print("wscfer_node end to end: image stamp -> expressions arrival (ms)\n")
    print_table(["frames", "rate (Hz)", "offered Hz", "processed Hz", "published", "processed", "skipped",
                 "lost", "p50", "p95", "p99", "node CPU"], rows)
    for line in summaries:
        print(f"- {line}")
    print(f"- node resident memory: {memory_warm:.0f} MB after warm-up, {memory_end:.0f} MB after the run "
          f"(peak {memory_peak:.0f} MB)")
    print(f"- {TARGETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
