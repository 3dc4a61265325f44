"""Segment logs (durability modes, group commit, rotation, torn tails) and the event index."""

import os
import threading

import pytest

from service.eventlog.index import EventIndex
from service.eventlog.segments import (
    LogWriteError,
    SegmentWriter,
    is_live,
    read_complete_lines,
    segment_paths,
    set_aside_torn_tails,
    torn_tail_size,
)
from service.layout import DECISION_KIND
from tests.service_support import logged_decisions, write_segment


def all_lines(directory, kind="decisions") -> list[bytes]:
    return [line for path in segment_paths(directory, kind) for line in path.read_bytes().splitlines(keepends=True)]


@pytest.mark.parametrize("durability", ["group", "fsync", "write"])
def test_concurrent_appends_land_whole_in_every_mode(tmp_path, durability):
    writer = SegmentWriter(tmp_path, "decisions", durability=durability)
    expected = [f'{{"thread":{t},"i":{i},"pad":"{"x" * (i * 37 % 900)}"}}\n'.encode() for t in range(6) for i in range(60)]

    def append(t: int) -> None:
        for line in expected[t * 60 : (t + 1) * 60]:
            writer.append(line)

    threads = [threading.Thread(target=append, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert is_live(writer.path)
    writer.close()
    assert not is_live(writer.path)
    assert sorted(all_lines(tmp_path)) == sorted(expected)


@pytest.mark.parametrize("durability", ["group", "fsync"])
def test_the_caller_never_waits_for_the_disk_its_committer_writes_and_fsyncs(tmp_path, monkeypatch, durability):
    """The service submits decision lines from its event loop: in the durable modes only the
    committer thread writes and fsyncs (the real fsync, observed)."""
    fsync, writers = os.fsync, []

    def observed_fsync(fd):
        writers.append(threading.current_thread().name)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", observed_fsync)
    writer = SegmentWriter(tmp_path, "decisions", durability=durability)
    try:
        futures = [writer.submit(f"{i}\n".encode()) for i in range(10)]
        for future in futures:
            future.result(timeout=5)
    finally:
        writer.close()
    committed = writers[:-1]  # the last is close()'s own fsync, on this thread once the committer has stopped
    assert committed and set(committed) == {"decisions-committer"}, writers
    assert all_lines(tmp_path) == [f"{i}\n".encode() for i in range(10)]


def test_group_commit_makes_queued_lines_durable_together(tmp_path):
    writer = SegmentWriter(tmp_path, "decisions", durability="group", group_commit_s=0.05)
    futures = [writer.submit(f"{i}\n".encode()) for i in range(50)]
    for future in futures:
        future.result(timeout=5)
    assert writer.n_commits <= 2  # 50 lines queued within the 50 ms gathering wait
    writer.close()
    assert all_lines(tmp_path) == [f"{i}\n".encode() for i in range(50)]


def test_fsync_durability_writes_and_fsyncs_each_line_on_its_own_in_order(tmp_path):
    writer = SegmentWriter(tmp_path, "decisions", durability="fsync")
    try:
        futures = [writer.submit(f"{i}\n".encode()) for i in range(30)]  # queued faster than the committer writes
        for future in futures:
            future.result(timeout=5)
        assert writer.n_commits == 30
    finally:
        writer.close()
    assert all_lines(tmp_path) == [f"{i}\n".encode() for i in range(30)]


def test_segments_rotate_by_size_and_by_time_in_order(tmp_path):
    now = [1000.0]
    writer = SegmentWriter(tmp_path, "decisions", durability="write", max_bytes=1000, max_seconds=60, clock=lambda: now[0])
    lines = [f"{i:04d}{'y' * 95}\n".encode() for i in range(35)]  # 100 bytes each
    for i, line in enumerate(lines):
        if i == 25:
            now[0] += 61  # the time limit rotates although the segment is half full
        writer.append(line)
    writer.close()
    sizes = [p.stat().st_size for p in segment_paths(tmp_path, "decisions")]
    assert sizes == [1000, 1000, 500, 1000]  # 10 + 10 lines by size, 5 until the time limit, 10
    assert all_lines(tmp_path) == lines


def test_a_failed_write_is_not_acknowledged_and_the_next_goes_to_a_fresh_segment(tmp_path):
    writer = SegmentWriter(tmp_path, "decisions", durability="fsync")
    writer.append(b"first\n")
    broken = writer.path
    os.close(writer._fd)  # the disk goes away under the writer
    with pytest.raises(LogWriteError):
        writer.append(b"second\n")
    writer.append(b"third\n")
    writer.close()
    assert writer.path != broken
    assert all_lines(tmp_path) == [b"first\n", b"third\n"]


def test_a_torn_last_line_of_a_finished_segment_is_set_aside(tmp_path):
    finished = write_segment(tmp_path, "decisions", [b'{"EventId":"a"}\n', b'{"EventId":"b"}\n', b'{"EventId":"c","Tim'], 1)
    clean = write_segment(tmp_path, "decisions", [b'{"EventId":"d"}\n'], 2)
    live = SegmentWriter(tmp_path, "decisions", durability="write")
    live.append(b'{"EventId":"e"}\n')
    with open(live.path, "ab") as handle:
        handle.write(b'{"EventId":"f","Ti')  # a line its live writer is still writing
    assert torn_tail_size(finished) == len(b'{"EventId":"c","Tim')
    repaired = set_aside_torn_tails(tmp_path, "decisions", tmp_path / "quarantine")
    assert [r.segment for r in repaired] == [finished]
    assert finished.read_bytes() == b'{"EventId":"a"}\n{"EventId":"b"}\n'
    assert (tmp_path / "quarantine" / f"{finished.name}.torn").read_bytes() == b'{"EventId":"c","Tim\n'
    assert clean.read_bytes() == b'{"EventId":"d"}\n'
    assert live.path.read_bytes().endswith(b'"Ti')  # a live writer's segment is never touched
    assert set_aside_torn_tails(tmp_path, "decisions", tmp_path / "quarantine") == []
    live.close()


def test_reading_stops_at_the_last_complete_line(tmp_path):
    path = write_segment(tmp_path, "decisions", [b"one\n", b"two\n", b"thr"], 1)
    data, offset = read_complete_lines(path, 0)
    assert (data, offset) == (b"one\ntwo\n", 8)
    assert read_complete_lines(path, offset) == (b"", 8)


def test_the_event_index_finds_other_writers_decisions_and_forgets_old_ones(tmp_path):
    ids, lines, decisions, _ = logged_decisions(4, 1_000.0, 10.0)
    write_segment(tmp_path, DECISION_KIND, lines[:2], 1, pid=1)
    now = [1_035.0]
    index = EventIndex(tmp_path, memory_s=30.0, clock=lambda: now[0])
    found = index.find(ids[1])
    assert found.timestamp == pytest.approx(1_010.0) and found.shelf_ids == decisions[1][1].shelf_ids
    assert index.find(ids[0]) is None  # decided at 1000, older than the 30 s memory
    assert index.find(ids[2]) is None
    write_segment(tmp_path, DECISION_KIND, lines[2:], 2, pid=2)  # another worker logs more
    assert index.find(ids[3]).shelf_ids == decisions[3][1].shelf_ids
    assert index.n_refreshes == 4
    index.add("own", 1_034.0, ("shelf-1",))
    assert index.seen_here("own") and index.find("own").shelf_ids == ("shelf-1",)
    assert index.n_refreshes == 4  # known events need no refresh
