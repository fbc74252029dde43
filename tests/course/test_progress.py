"""The SQLite progress store: persistence, concurrency, corruption, export."""

import csv
import io
import json
import multiprocessing as mp
import os
import sqlite3
import threading

import pytest

from course.progress import ENV_VAR, ProgressStore, StoreUnavailable, default_path, open_store


def test_roundtrip_and_persistence_across_reopen(tmp_path):
    path = tmp_path / "p.sqlite3"
    s = ProgressStore(path)
    s.record("ada", "kfac", "q1", "single", 2, False, 0.0)
    s.record("ada", "kfac", "q1", "single", 1, True, 1.0)
    aid = s.record("ada", "summary", "r1", "reflection", "memory grows as n^2", None, None)
    s.rate(aid, 3)
    s.record("bob", "kfac", "q1", "single", 0, False, 0.0)
    del s

    again = ProgressStore(path)  # a server restart
    latest = again.latest("ada")
    assert latest[("kfac", "q1")].response == 1 and latest[("kfac", "q1")].correct is True
    assert latest[("summary", "r1")].self_rating == 3
    assert latest[("summary", "r1")].correct is None
    assert len(again.attempts("ada")) == 3
    assert again.learners() == ["ada", "bob"]


def test_reset_only_touches_one_learner(tmp_path):
    s = ProgressStore(tmp_path / "p.sqlite3")
    for i in range(3):
        s.record("ada", "kfac", f"q{i}", "single", 0, True, 1.0)
    s.record("bob", "kfac", "q0", "single", 0, True, 1.0)
    assert s.reset("ada") == 3
    assert s.attempts("ada") == [] and len(s.attempts("bob")) == 1


def test_rating_must_be_valid(tmp_path):
    s = ProgressStore(tmp_path / "p.sqlite3")
    with pytest.raises(ValueError):
        s.rate(1, 5)


def test_export_json_and_csv_hold_every_attempt(tmp_path):
    s = ProgressStore(tmp_path / "p.sqlite3")
    s.record("ada", "kfac", "q1", "multiple", [0, 2], True, 1.0)
    s.record("ada", "shampoo", "mem", "numeric", "4.1", True, 1.0)
    data = json.loads(s.export_json("ada"))
    assert data["learner"] == "ada"
    assert [a["question"] for a in data["attempts"]] == ["q1", "mem"]
    assert data["attempts"][0]["response"] == [0, 2]
    rows = list(csv.DictReader(io.StringIO(s.export_csv("ada"))))
    assert [r["lesson"] for r in rows] == ["kfac", "shampoo"]
    assert json.loads(rows[0]["response"]) == [0, 2]


def _writer(path, who, n):
    s = ProgressStore(path)
    for i in range(n):
        s.record(who, "kfac", f"q{i}", "single", i, i % 2 == 0, float(i % 2 == 0))


def test_concurrent_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "p.sqlite3")
    ProgressStore(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"p{k}", 60)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = ProgressStore(path)
    for k in range(4):
        rows = s.attempts(f"p{k}")
        assert [r.question for r in rows] == [f"q{i}" for i in range(60)]


def test_concurrent_threads_share_one_store(tmp_path):
    s = ProgressStore(tmp_path / "p.sqlite3")
    threads = [threading.Thread(target=lambda k=k: [s.record(f"t{k}", "l", f"q{i}", "single", i, True, 1.0)
                                                    for i in range(50)]) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(s.attempts(f"t{k}")) for k in range(6)) == 300


def test_corrupt_file_is_reported_and_left_untouched(tmp_path):
    path = tmp_path / "p.sqlite3"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreUnavailable):
        ProgressStore(path)
    store, warning = open_store(path)
    assert not store.persistent and warning and str(path) in warning
    store.record("ada", "kfac", "q1", "single", 1, True, 1.0)  # still usable, in memory
    assert len(store.attempts("ada")) == 1
    assert path.read_bytes() == garbage


def test_truncated_database_is_reported(tmp_path):
    path = tmp_path / "p.sqlite3"
    s = ProgressStore(path)
    for i in range(200):
        s.record("ada", "kfac", f"q{i}", "reflection", "x" * 500, None, None)
    del s
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(path) + suffix):
            os.remove(str(path) + suffix)
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\x00" * 50 + data[150 : len(data) // 2])
    store, warning = open_store(path)
    assert warning is not None and not store.persistent


def test_path_that_cannot_be_a_folder_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store, warning = open_store(blocker / "sub" / "p.sqlite3")
    assert warning and not store.persistent


def test_write_failure_raises_store_unavailable(tmp_path):
    path = tmp_path / "p.sqlite3"
    s = ProgressStore(path)
    conn = sqlite3.connect(path)
    conn.execute("BEGIN EXCLUSIVE")  # another writer holds the lock for too long
    try:
        slow = ProgressStore.__new__(ProgressStore)
        slow.__dict__.update(s.__dict__, timeout=0.2)
        with pytest.raises(StoreUnavailable):
            slow.record("ada", "kfac", "q1", "single", 1, True, 1.0)
    finally:
        conn.rollback()
        conn.close()


def test_default_path_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "x.sqlite3"))
    assert default_path() == tmp_path / "x.sqlite3"
    monkeypatch.delenv(ENV_VAR)
    assert default_path().name == "progress.sqlite3"
