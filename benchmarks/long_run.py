"""The node for a long run: every frame of the shared videos, again and again, memory and tracks watched.

    python benchmarks/long_run.py [--model FILE] [--frames 20000] [--json FILE]

``wscfer_node`` runs in its own process with the shipped parameters file and
Fast DDS profile, except that its input is reliable, and this script sends
it the frames of ``woman2.mp4`` and ``short_hamilton_clip.mp4`` in turn (as
a 640x480 camera frames them), each as soon as the previous one is
answered: every frame is processed, none is skipped or lost, and the run
goes as fast as the node does.  Whenever the video changes, the faces of
the last one disappear and their tracks must expire.

Measured: the node's resident memory after ``--warmup`` frames and every
``--sample-every`` frames; the faces the node tracks (``faces tracked`` of
/diagnostics: live tracks, which must stay bounded), the highest face id it
gave, and its ROS4HRI per-face publishers (``/humans/faces/<id>/...``) as
the ROS graph lists them, which must follow the tracked faces, not the ids
given.  ``--json`` writes the figures for scripts and tests.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from bench_node import RESULTS_QOS, Bench
from common import (BenchmarkError, add_model_argument, argument_parser, check_positive, fit_frame,
                    machine_description, print_table, read_video, resolve_model)

VIDEOS = ("woman2.mp4", "short_hamilton_clip.mp4")
FRAME_SIZE = (640, 480)
ANSWER_TIMEOUT_S = 30.0
INPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class Answers:
    """The newest answered stamp and the highest face id in the node's ``expressions``."""

    def __init__(self):
        self.last_stamp = -1
        self.highest_id = 0

    def on_expressions(self, message: String) -> None:
        answer = json.loads(message.data)
        self.highest_id = max([self.highest_id] + [face["id"] for face in answer["faces"]])
        self.last_stamp = answer["stamp"]["sec"]


def video_messages() -> list[Image]:
    """One bgr8 message per frame of the videos, in play order."""
    from wscfer_ros.messages import fill_image

    messages = []
    for video in VIDEOS:
        for frame in read_video(video):
            message = Image()
            fill_image(message, fit_frame(frame, *FRAME_SIZE), "bgr8")
            message.header.frame_id = "long_run_camera"
            messages.append(message)
    return messages


def face_publishers(bench) -> int:
    """Topics under /humans/faces/<id>/ that the node publishes, as the ROS graph lists them."""
    namespace, name = bench.observer.hardware_id.rsplit("/", 1)
    topics = bench.ros_node.get_publisher_names_and_types_by_node(name, namespace)
    return sum(1 for topic, _ in topics
               if topic.startswith("/humans/faces/") and topic != "/humans/faces/tracked")


def run(args, work: Path) -> dict:
    model = resolve_model(args.model)
    messages = video_messages()
    args.node_param = ["qos:=reliable", "diagnostics_period:=0.5", *args.node_param]
    bench = Bench(args, model, work)
    try:
        answers = Answers()
        answers_subscription = bench.ros_node.create_subscription(
            String, bench.results.topic_name, answers.on_expressions, RESULTS_QOS)
        publisher = bench.ros_node.create_publisher(Image, bench.image_topic, INPUT_QOS)
        bench.wait_for_node()

        def connected() -> bool:
            # Both ends of both topics: discovery is not symmetric, and an answer the
            # node publishes before its publisher matched our subscription is lost.
            node_side = bench.observer.diagnostics[-1][1]
            return (publisher.get_subscription_count() >= 1
                    and int(node_side.get("input publishers", 0)) >= 1
                    and answers_subscription.get_publisher_count() >= 1
                    and int(node_side.get("subscribers: expressions", 0)) >= 2)   # the observer's and ours
        bench.wait_until(connected, "wscfer_node and this script matched on image and expressions",
                         ANSWER_TIMEOUT_S)

        samples = []   # (frames, seconds, resident MB, faces tracked now, highest id, face publishers)
        started = time.monotonic()
        for index in range(args.frames):
            message = messages[index % len(messages)]
            message.header.stamp.sec = index
            publisher.publish(message)
            bench.wait_until(lambda: answers.last_stamp >= index, f"the answer to frame {index}",
                             ANSWER_TIMEOUT_S)
            done = index + 1
            if done == args.warmup or (done > args.warmup and done % args.sample_every == 0) \
                    or done == args.frames:
                tracked = int(bench.observer.diagnostics[-1][1]["faces tracked"])
                samples.append((done, time.monotonic() - started, bench.node.memory_mb()[0], tracked,
                                answers.highest_id, face_publishers(bench)))
                print(f"  {done} frames, {samples[-1][2]:.0f} MB", file=sys.stderr, flush=True)
        counters = bench.settled_counters(time.monotonic())
        peak_mb = bench.node.memory_mb()[1]
        # Once the graph has caught up, it lists what the node says it has.
        bench.wait_until(lambda: face_publishers(bench) == int(
            bench.observer.diagnostics[-1][1].get("ROS4HRI publishers", -1)),
            "the ROS graph agrees with the node's ROS4HRI publishers", ANSWER_TIMEOUT_S)
        ros4hri_end = {"faces": int(bench.observer.diagnostics[-1][1]["ROS4HRI faces"]),
                       "publishers": face_publishers(bench)}
    finally:
        bench.close()

    warm = next(sample for sample in samples if sample[0] >= args.warmup)
    tracked_max = max(int(values["faces tracked"]) for _, values in bench.observer.diagnostics)
    return {
        "model": str(model), "frames": args.frames, "videos": list(VIDEOS),
        "video_frames": len(messages), "warmup_frames": args.warmup,
        "seconds": samples[-1][1],
        "rss_mb_after_warmup": warm[2], "rss_mb_end": samples[-1][2], "rss_mb_peak": peak_mb,
        "rss_growth_mb": samples[-1][2] - warm[2],
        "faces_tracked_max": tracked_max, "highest_face_id": answers.highest_id,
        "counters": counters,
        "face_publishers_max": max(sample[5] for sample in samples),
        "ros4hri_faces_end": ros4hri_end["faces"], "face_publishers_end": ros4hri_end["publishers"],
        "samples": [dict(zip(("frames", "seconds", "rss_mb", "faces_tracked", "highest_id",
                              "face_publishers"), sample))
                    for sample in samples],
    }


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    add_model_argument(parser)
    parser.add_argument("--frames", type=int, default=20000, help="frames to send (default 20000)")
    parser.add_argument("--warmup", type=int, default=1000,
                        help="frames before the reference memory sample (default 1000)")
    parser.add_argument("--sample-every", type=int, default=2000,
                        help="frames between two memory samples (default 2000)")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter, e.g. threads:=1 (repeatable)")
    parser.add_argument("--domain-id", type=int, default=1 + os.getpid() % 100,
                        help="ROS_DOMAIN_ID of the run (default: derived from the process id)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    for name in ("frames", "warmup", "sample_every"):
        check_positive(parser, f"--{name.replace('_', '-')}", getattr(args, name))
    if args.warmup > args.frames:
        parser.error("--warmup must not exceed --frames")

    with tempfile.TemporaryDirectory(prefix="wscfer-long-run-") as folder:
        try:
            print(machine_description(), flush=True)
            figures = run(args, Path(folder))
        except BenchmarkError as error:
            print(f"long_run: error: {error}", file=sys.stderr)
            return 1
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))

    counters = figures["counters"]
    print(f"\nwscfer_node long run: {figures['frames']} frames of {', '.join(VIDEOS)} "
          f"({figures['video_frames']} frames, looped), 640x480, each sent when the last was answered\n")
    print_table(["frames", "minutes", "resident MB", "faces tracked", "highest face id",
                 "face publishers"],
                [[s["frames"], f"{s['seconds'] / 60:.1f}", f"{s['rss_mb']:.0f}", s["faces_tracked"],
                  s["highest_id"], s["face_publishers"]] for s in figures["samples"]])
    print(f"\n- resident memory {figures['rss_mb_after_warmup']:.0f} MB after {figures['warmup_frames']} "
          f"frames, {figures['rss_mb_end']:.0f} MB at the end: {figures['rss_growth_mb']:+.0f} MB "
          f"(peak {figures['rss_mb_peak']:.0f} MB)")
    print(f"- faces tracked at most {figures['faces_tracked_max']} at once; "
          f"{figures['highest_face_id']} face ids given in all")
    print(f"- ROS4HRI per-face publishers at most {figures['face_publishers_max']}; at the end "
          f"{figures['face_publishers_end']} for {figures['ros4hri_faces_end']} tracked faces")
    print(f"- frames received {counters['frames received']}, processed {counters['frames processed']}, "
          f"skipped {counters['frames skipped']}, rejected {counters['frames rejected']}, "
          f"failed {counters['frames failed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
