"""benchmarks/long_run.py, short: the node's memory, face tracks and ROS4HRI publishers stay bounded over a run.

The full run (20,000 frames; README) takes minutes; this one sends 1,500
frames of the same videos, which already cross from one video to the other
(every track of the first must expire) and back.
"""
import json
import subprocess
import sys

from ros_helpers import REPO_ROOT, reserved_domain

FRAMES = 1500
WARMUP = 500
MAX_GROWTH_MB = 30


def test_memory_and_tracks_stay_bounded_over_a_run(media_dir, tmp_path):
    figures_path = tmp_path / "long_run.json"
    with reserved_domain() as domain:
        run = subprocess.run(
            [sys.executable, "benchmarks/long_run.py", "--frames", str(FRAMES), "--warmup", str(WARMUP),
             "--sample-every", "250", "--domain-id", str(domain), "--json", str(figures_path)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(figures_path.read_text())

    counters = figures["counters"]
    assert counters["frames processed"] == counters["frames received"] == FRAMES
    assert counters["frames skipped"] == counters["frames rejected"] == counters["frames failed"] == 0
    assert figures["rss_growth_mb"] <= MAX_GROWTH_MB, figures["samples"]
    # Faces come and go across the loop; only the live ones are tracked.
    assert figures["highest_face_id"] > figures["faces_tracked_max"], figures
    assert figures["samples"][-1]["faces_tracked"] <= figures["faces_tracked_max"] <= 12, figures
    # Per-face publishers (roi and expression) follow the tracked faces, not the ids given.
    assert figures["face_publishers_end"] == 2 * figures["ros4hri_faces_end"], figures
    assert figures["face_publishers_max"] <= 2 * (figures["faces_tracked_max"] + 2), figures
    assert figures["highest_face_id"] > figures["faces_tracked_max"] + 2, figures
    assert "resident memory" in run.stdout
