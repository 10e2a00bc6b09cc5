"""Reading files: chunking, duplicates across chunks, file-level errors, fuzzing."""

import csv
import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rifml.errors import RifmlInputError
from rifml.io.reader import PanelFile, validated_chunks


def collect(path, catalog, chunk_rows=3):
    chunks = list(validated_chunks(PanelFile(path, catalog, chunk_rows=chunk_rows)))
    panel = pd.concat([c.panel for c in chunks])
    rejects = pd.concat([c.rejects for c in chunks], ignore_index=True)
    return panel, rejects


def test_duplicates_across_chunk_boundaries(tmp_path, catalog):
    path = tmp_path / "panels.csv"
    lines = ["patient_id,pb_nk_pct"] + [f"P{i},{i}" for i in range(10)] + ["P1,5", "P8,9"]
    path.write_text("\n".join(lines) + "\n")
    panel, rejects = collect(path, catalog, chunk_rows=4)
    assert sorted(rejects["row"]) == [3, 10, 12, 13]  # both P1 rows and both P8 rows
    assert set(rejects["reason"]) == {"duplicate patient_id"}
    assert len(panel) == 8


def test_file_of_only_bad_rows(tmp_path, catalog):
    path = tmp_path / "bad.csv"
    path.write_text("patient_id,pb_nk_pct,em_cd68_pct\n,1,2\nA,-1,\nB,,\nC,x,1\n")
    panel, rejects = collect(path, catalog)
    assert panel.empty
    assert rejects["reason"].tolist() == ["missing patient_id", "negative value", "no markers", "not a number"]
    assert rejects["row"].tolist() == [2, 3, 4, 5]


def test_line_numbers_survive_blank_and_multiline_records(tmp_path, catalog):
    path = tmp_path / "odd.csv"
    path.write_text('patient_id,pb_nk_pct,note\nA,1,x\n\nB,-1,"two\nlines"\nC,-2,y\n')
    _, rejects = collect(path, catalog)
    assert rejects.set_index("patient_id")["row"].to_dict() == {"B": 4, "C": 6}


def test_header_matching_is_forgiving_but_ids_required(tmp_path, catalog):
    path = tmp_path / "case.csv"
    path.write_text(" Patient_ID ,PB_NK_PCT\nA,4\n")
    panel, _ = collect(path, catalog)
    assert panel.loc[2, "pb_nk_pct"] == 4.0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"patient_id,pb_nk_pct\n", "header only"),
        (b"id,pb_nk_pct\n1,2\n", "no patient_id column"),
        (b"patient_id,pb_nk_pct,pb_nk_pct\nA,1,2\n", "appears twice"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
        (b"PAR1garbage", "Parquet"),
    ],
)
def test_file_level_problems_are_clear_errors(tmp_path, catalog, content, message):
    path = tmp_path / "file.csv"
    path.write_bytes(content)
    with pytest.raises(RifmlInputError, match=message):
        PanelFile(path, catalog)


def test_missing_file_and_folder(tmp_path, catalog):
    with pytest.raises(RifmlInputError, match="no such file"):
        PanelFile(tmp_path / "absent.csv", catalog)
    with pytest.raises(RifmlInputError, match="folder"):
        PanelFile(tmp_path, catalog)


def test_parquet_gives_the_same_result_as_csv(tmp_path, catalog):
    frame = pd.DataFrame(
        {"patient_id": ["A", "B", "C", "A"], "pb_nk_pct": ["3", "<1", "abc", "4"], "em_cd68_pct": ["1", "", "2", "3"]}
    )
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet", index=False)
    csv_panel, csv_rejects = collect(tmp_path / "p.csv", catalog)
    pq_panel, pq_rejects = collect(tmp_path / "p.parquet", catalog)
    pd.testing.assert_frame_equal(csv_rejects, pq_rejects)
    pd.testing.assert_frame_equal(csv_panel, pq_panel)


def test_typed_parquet_columns(tmp_path, catalog):
    frame = pd.DataFrame({"patient_id": ["A", "B"], "pb_nk_pct": [3.5, -1.0], "age_years": [30, 31]})
    frame.to_parquet(tmp_path / "typed.parquet", index=False)
    panel, rejects = collect(tmp_path / "typed.parquet", catalog)
    assert panel.loc[2, "pb_nk_pct"] == 3.5
    assert rejects["reason"].tolist() == ["negative value"]


cell = st.one_of(
    st.sampled_from(["", "1", "0", "100", "-1", "<0.5", "<", "abc", "1e400", "AA", "Bx", "yes", "P1", '"', ","]),
    st.text(alphabet=string.printable + "é\u00a0\ufeff", max_size=6),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(cell, min_size=0, max_size=7), min_size=1, max_size=12))
def test_fuzzed_cells_never_crash_and_every_row_is_accounted(tmp_path, catalog, rows):
    header = ["patient_id", "pb_nk_pct", "serum_il6_pg_ml", "kir_haplotype", "age_years", "em_cd68_pct", "extra"]
    path = tmp_path / "fuzz.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)  # quotes embedded CR/LF, so a record stays one row
        writer.writerow(header)
        writer.writerows((r + [""] * 7)[:7] for r in rows)
    panel_file = PanelFile(path, catalog, chunk_rows=3)
    chunks = list(validated_chunks(panel_file))
    panel = pd.concat([c.panel for c in chunks])
    rejects = pd.concat([c.rejects for c in chunks], ignore_index=True)
    assert len(panel) + len(rejects) == panel_file.row_count
    assert set(panel.index).isdisjoint(set(rejects["row"]))
    if not any("\r" in c or "\n" in c for r in rows for c in r):
        assert panel_file.row_count == len(rows)
    else:  # a quoted cell over lines is one record, unless it would take in a full-width line
        assert panel_file.row_count >= len(rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_random_bytes_never_crash(tmp_path, catalog, body):
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"patient_id,pb_nk_pct,em_cd68_pct\n" + body)
    try:
        panel_file = PanelFile(path, catalog)
    except RifmlInputError:
        return  # a clear file-level refusal is an acceptable outcome
    chunks = list(validated_chunks(panel_file))
    accounted = sum(len(c.panel) + len(c.rejects) for c in chunks)
    data_records = sum(len(list(c.panel.index)) for c in chunks) + sum(len(c.rejects) for c in chunks)
    assert accounted == data_records
    rows = np.concatenate([np.r_[c.panel.index.to_numpy(), c.rejects["row"].to_numpy()] for c in chunks])
    assert len(np.unique(rows)) == len(rows)


def test_atomic_writer_leaves_nothing_under_final_name_on_failure(tmp_path):
    from rifml.io.writer import AtomicCsvWriter

    target = tmp_path / "calls.csv"
    with pytest.raises(RuntimeError):
        with AtomicCsvWriter(target, columns=["a"]) as writer:
            writer.write(pd.DataFrame({"a": [1, 2]}))
            raise RuntimeError("killed midway")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with AtomicCsvWriter(target, columns=["a", "b"]) as writer:
        pass
    assert target.read_text().strip() == "a,b"


def test_fast_and_careful_csv_paths_agree(tmp_path, catalog):
    """Plain files go through Arrow; quoted ones through the csv module. Same verdicts, same values."""
    from rifml.simulate import simulate_cohort

    cohort, _ = simulate_cohort(400, seed=9, bad_share=0.1, catalog=catalog)
    plain, quoted = tmp_path / "plain.csv", tmp_path / "quoted.csv"
    cohort.to_csv(plain, index=False)
    cohort.to_csv(quoted, index=False, quoting=csv.QUOTE_ALL)
    assert PanelFile(plain, catalog).simple and not PanelFile(quoted, catalog).simple
    fast_panel, fast_rejects = collect(plain, catalog, chunk_rows=97)
    slow_panel, slow_rejects = collect(quoted, catalog, chunk_rows=97)
    pd.testing.assert_frame_equal(fast_rejects, slow_rejects)
    numeric = [m.name for m in catalog.numeric_markers]
    pd.testing.assert_frame_equal(fast_panel[numeric], slow_panel[numeric])
    assert fast_panel["patient_id"].astype(str).tolist() == slow_panel["patient_id"].astype(str).tolist()


@pytest.mark.parametrize(
    "content, simple",
    [
        (b"patient_id,pb_nk_pct\nA,1\nB,2\n", True),
        (b"patient_id,pb_nk_pct\nA,1\nB,2", True),  # no final newline
        (b"patient_id,pb_nk_pct\nA,1\n\nB,2\n", False),  # blank line shifts line numbers
        (b"patient_id,pb_nk_pct\nA,1,9\nB,2\n", False),  # a row with an extra field
        (b'patient_id,pb_nk_pct\n"A",1\n', False),
        (b"patient_id,pb_nk_pct\r\nA,1\r\n", True),  # Windows line ends: Arrow reads them
        (b"patient_id;pb_nk_pct\r\nA;1,5\r\n", True),  # European Excel export
        (b"patient_id,pb_nk_pct\rA,1\r", False),  # bare CR (old Mac): the careful path
        (b"patient_id,pb_nk_pct\nA\xff,1\n", True),  # not UTF-8: read as Windows-1252 by Arrow
    ],
)
def test_fast_path_only_for_plain_files(tmp_path, catalog, content, simple):
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    panel_file = PanelFile(path, catalog)
    assert panel_file.simple is simple
    chunks = list(validated_chunks(panel_file))
    assert sum(len(c.panel) + len(c.rejects) for c in chunks) == panel_file.row_count


def test_quoted_header_still_takes_the_fast_path_and_our_outputs_are_plain(tmp_path, catalog):
    from rifml.io.writer import AtomicCsvWriter

    quoted = tmp_path / "q.csv"
    quoted.write_bytes(b'"patient_id","pb_nk_pct"\nA,1\nB,2\n')
    assert PanelFile(quoted, catalog).simple
    written = tmp_path / "w.csv"
    with AtomicCsvWriter(written) as writer:
        writer.write(pd.DataFrame({"patient_id": ["A", "B"], "pb_nk_pct": [1.5, None], "note": ["x", "y"]}))
    assert written.read_text().splitlines()[0] == "patient_id,pb_nk_pct,note"
    assert PanelFile(written, catalog).simple


def test_prefetcher_keeps_order_and_passes_errors_on():
    from rifml.io.reader import Prefetcher

    assert list(Prefetcher(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise RuntimeError("disk gone")

    seen = []
    with pytest.raises(RuntimeError, match="disk gone"):
        for item in Prefetcher(failing()):
            seen.append(item)
    assert seen == [1]


def test_prefetcher_reads_ahead_from_the_start_and_stops_when_closed():
    import threading

    from rifml.io.reader import Prefetcher

    produced = []
    ready = threading.Event()

    def endless():
        for i in range(10**9):
            produced.append(i)
            if i == 2:
                ready.set()
            yield i

    prefetcher = Prefetcher(endless(), depth=2)
    assert ready.wait(5), "nothing was read before the first request"  # reading started at construction
    prefetcher.close()
    stopped_at = len(produced)
    assert stopped_at <= 4  # depth 2 waiting + one handed over + one being made
    assert not prefetcher._worker.is_alive()


def test_writer_quotes_only_chunks_that_need_it_and_reads_back_the_same(tmp_path):
    from rifml.io.writer import AtomicCsvWriter

    plain = pd.DataFrame({"patient_id": ["A", "B"], "note": ["ok", "Ünïcode"], "x": [1.5, None]})
    awkward = pd.DataFrame({"patient_id": ["C", "D"], "note": ['says "hi", then', "two\nlines"], "x": [2.0, 3.25]})
    target = tmp_path / "mixed.csv"
    with AtomicCsvWriter(target) as writer:
        writer.write(plain)  # Arrow path
        writer.write(awkward)  # separators, quotes, newline: the pandas path quotes them
    back = pd.read_csv(target, keep_default_na=False, na_values=[""])
    expected = pd.concat([plain, awkward], ignore_index=True)
    pd.testing.assert_frame_equal(back, expected)
