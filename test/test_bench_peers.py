"""benchmarks/bench_peers.py's own logic: scoring with missed faces, the peers' crops, results.md sections.

The benchmark itself needs fer's environment and the full data; these parts do not.
"""
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from bench_peers import NO_FACE, scores, square_crop  # noqa: E402
from common import write_section  # noqa: E402


def test_an_image_without_a_face_is_wrong_for_its_class_and_recall_averages_the_classes_present():
    truth = np.array(["happy", "happy", "happy", "sad"])
    accuracy, mean_recall = scores(truth, np.array(["happy", NO_FACE, "happy", "sad"], dtype=object))
    assert accuracy == pytest.approx(3 / 4)
    assert mean_recall == pytest.approx((2 / 3 + 1) / 2)   # five classes absent, "no face" never a truth


def test_a_peer_crop_is_the_square_around_the_box_at_the_frames_resolution():
    frame = np.zeros((100, 120, 3), np.uint8)
    frame[30:70, 50:70] = 255                        # a 20 wide, 40 high "face"
    crop = square_crop(frame, (50, 30, 20, 40), 1.0)
    assert crop.shape == (40, 40, 3)
    np.testing.assert_array_equal(crop[:, 10:30], 255)   # the box, centred
    np.testing.assert_array_equal(crop[:, :9], 0)
    assert square_crop(frame, (50, 30, 20, 40), 1.5).shape == (60, 60, 3)


def test_a_section_of_results_md_is_replaced_and_the_others_kept(tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# Benchmark results\n\n## Classifier alone\n\nfast\n\n## Peers side by side\n\nold\n\n"
                       "## Training throughput\n\nslow\n")
    write_section(results, "Peers side by side", "new table\n")
    assert results.read_text() == ("# Benchmark results\n\n## Classifier alone\n\nfast\n\n## Peers side by side\n\n"
                                   "new table\n\n## Training throughput\n\nslow\n")


def test_a_missing_section_is_appended_and_a_missing_file_created(tmp_path):
    results = tmp_path / "results.md"
    write_section(results, "Peers side by side", "table")
    assert results.read_text() == "# Benchmark results\n\n## Peers side by side\n\ntable\n"
    write_section(results, "Other", "more")
    assert results.read_text().endswith("table\n\n## Other\n\nmore\n")
