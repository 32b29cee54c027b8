"""The mailboxes between ROS callbacks and the worker: only the newest item waits."""
import threading

from wscfer_ros.perception.mailbox import NewestFrame, NewestPerKey


def test_newest_frame_keeps_only_the_newest_message():
    mailbox = NewestFrame()
    mailbox.open()
    for message in ("first", "second", "third"):
        mailbox.put(message)
    newest = mailbox.take()
    mailbox.put("fourth")
    mailbox.close()

    assert newest == "third"
    assert mailbox.take() is None, "closing drops the pending message and ends the worker"
    assert mailbox.skipped == 3
    mailbox.open()
    assert mailbox.skipped == 0, "counts start again at each activation"


def test_newest_per_face_keeps_one_image_per_id():
    mailbox = NewestPerKey()
    mailbox.open()
    for face_id, image in (("a", 1), ("b", 2), ("a", 3), ("c", 4)):
        mailbox.put(face_id, image)
    mailbox.drop("c")
    assert mailbox.take() == {"a": 3, "b": 2}
    assert mailbox.skipped == 2, "a's first image was replaced, c's dropped"
    mailbox.put("a", 5)
    mailbox.close()
    assert mailbox.take() is None
    assert mailbox.skipped == 3


def test_newest_per_face_wakes_the_worker():
    mailbox = NewestPerKey()
    mailbox.open()
    taken = []
    worker = threading.Thread(target=lambda: taken.append(mailbox.take()))
    worker.start()
    mailbox.put("a", 1)
    worker.join(5)
    assert taken == [{"a": 1}]
