"""The CSV writer: chunks written in its own thread, in order, the same bytes as one write, errors not lost."""

import numpy as np
import pandas as pd
import pytest

from rifml.io.writer import AtomicCsvWriter


def frame(first, n):
    rows = np.arange(first, first + n)
    return pd.DataFrame({"patient_id": [f"P{i}" for i in rows], "p": rows / 7, "flag": rows % 2 == 0,
                         "note": ["=cmd" if i % 3 == 0 else "x" for i in rows]})


def test_many_chunks_give_the_bytes_of_one_write(tmp_path):
    with AtomicCsvWriter(tmp_path / "one.csv") as writer:
        writer.write(frame(0, 1000))
    with AtomicCsvWriter(tmp_path / "many.csv") as writer:
        for first in range(0, 1000, 37):
            writer.write(frame(first, min(37, 1000 - first)))
        assert writer.rows == 1000
    assert (tmp_path / "many.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert b"'=cmd" in (tmp_path / "one.csv").read_bytes()


def test_an_error_in_the_writer_thread_surfaces_and_leaves_no_file(tmp_path, monkeypatch):
    def broken(self, frame):
        raise OSError("disk full")

    monkeypatch.setattr(AtomicCsvWriter, "_write_now", broken)
    with pytest.raises(OSError, match="disk full"):
        with AtomicCsvWriter(tmp_path / "calls.csv") as writer:
            writer.write(frame(0, 10))
    assert list(tmp_path.iterdir()) == []


def test_an_error_in_the_writer_thread_is_raised_at_the_next_write(tmp_path, monkeypatch):
    def broken(self, frame):
        raise OSError("disk full")

    monkeypatch.setattr(AtomicCsvWriter, "_write_now", broken)
    after_second_write = False
    with pytest.raises(OSError, match="disk full"):
        with AtomicCsvWriter(tmp_path / "calls.csv") as writer:
            writer.write(frame(0, 10))
            writer.write(frame(10, 10))
            after_second_write = True
    assert not after_second_write
    assert list(tmp_path.iterdir()) == []


def test_the_first_error_is_the_one_reported(tmp_path, monkeypatch):
    def broken(self, frame):
        raise OSError("disk full")

    monkeypatch.setattr(AtomicCsvWriter, "_write_now", broken)
    with pytest.raises(KeyboardInterrupt):
        with AtomicCsvWriter(tmp_path / "calls.csv") as writer:
            writer.write(frame(0, 10))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_categorical_cells_are_neutralized_like_text(tmp_path):
    """A categorical's labels are checked once, not row by row: the written cells are those of plain text."""
    labels = ["=HYPERLINK(1)", "ok", "-3", "+x"]
    rows = ["=HYPERLINK(1)", "ok", None, "-3", "+x", "ok"]
    frame = pd.DataFrame({"as_text": pd.Series(rows, dtype=object), "as_category": pd.Categorical(rows, categories=labels)})
    path = tmp_path / "out.csv"
    with AtomicCsvWriter(path) as writer:
        writer.write(frame)
    lines = path.read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in lines] == [line.split(",")[1] for line in lines]
    assert lines[0] == "'=HYPERLINK(1),'=HYPERLINK(1)" and lines[3] == "-3,-3" and lines[4] == "'+x,'+x"
