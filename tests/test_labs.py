"""Labs: offsets learned within subtypes, unseen labs adapted from the batch, calls independent of chunking.

Bars (stated here; simulated cohorts, complete panels):
  an unseen lab whose assays read 1.5x high on three markers (one the catalog does not flag
  as drifting) is adapted: its offsets are within 0.12 of log(1.5) on those markers and
  within 0.12 of 0 elsewhere, and its calls agree with the same panels undrifted for >= 90%
  (unadapted they agree less);
  below lab_min_panels complete panels a lab is flagged, not adapted;
  the calls of a batch do not depend on chunk size or row order.
"""

import numpy as np
import pandas as pd
import pytest

from rifml.labs import LabAdaptation, shrunk_median_offsets
from rifml.scoring import scored_chunks
from rifml.simulate import simulate_cohort
from rifml.training import load_train_config, profiler_from_config
from rifml.validate import ValidatedChunk, validate_chunk

DRIFT = 1.5


@pytest.fixture(scope="module")
def fitted(catalog):
    cohort, _ = simulate_cohort(2000, seed=31, catalog=catalog)
    train = validate_chunk(cohort, np.arange(2, 2002), catalog).panel
    profiler = profiler_from_config(load_train_config())
    profiler.set_params(classifier__n_estimators=40, subtype_trees=15, clustering__n_resamples=10)
    return profiler.fit(train, train["immune_profile"])


@pytest.fixture(scope="module")
def batch(catalog):
    cohort, _ = simulate_cohort(1500, seed=32, catalog=catalog)
    return validate_chunk(cohort, np.arange(2, 1502), catalog).panel


def drifted_markers(catalog):
    numeric = [m for m in catalog.numeric_markers if m.signals and not m.censorable or m.kind != "concentration"]
    flagged = [m.name for m in numeric if m.drifts][:2]
    unflagged = [m.name for m in numeric if not m.drifts and m.kind == "percent"][:1]
    assert len(flagged) == 2 and len(unflagged) == 1
    return flagged + unflagged


def new_lab(panel, catalog, rows):
    moved = panel.copy()
    index = moved.index[rows]
    moved.loc[index, "lab_id"] = "lab_never_seen"
    for name in drifted_markers(catalog):
        high = catalog.by_name[name].valid_range[1]
        moved.loc[index, name] = (moved.loc[index, name] * DRIFT).clip(upper=high)
    return moved


def test_unseen_lab_is_adapted_from_the_batch(fitted, batch, catalog):
    origin = batch["lab_id"].value_counts().index[0]  # the panels of one known lab, read by a new assay
    rows = (batch["lab_id"] == origin).to_numpy()
    moved = new_lab(batch, catalog, rows)
    adaptation = fitted.lab_adaptation(moved)
    assert list(adaptation.panels) == ["lab_never_seen"]
    assert adaptation.panels["lab_never_seen"] >= 300
    shifts = adaptation.shifts["lab_never_seen"]
    learned = fitted.features_.lab_shifts_.get(origin, {})  # what training learned for the origin lab
    for marker in catalog.numeric_markers:
        expected = learned.get(marker.name, 0.0) + (np.log(DRIFT) if marker.name in drifted_markers(catalog) else 0.0)
        assert shifts.get(marker.name, 0.0) == pytest.approx(expected, abs=0.12), marker.name

    reference = fitted.call(batch)["immune_profile"].to_numpy()[rows]
    adapted = fitted.call(moved, labs=adaptation)
    raw = fitted.call(moved, labs=LabAdaptation())
    agree_adapted = np.mean(adapted["immune_profile"].to_numpy()[rows] == reference)
    agree_raw = np.mean(raw["immune_profile"].to_numpy()[rows] == reference)
    assert agree_adapted >= 0.90 and agree_adapted > agree_raw
    assert adapted["lab_adapted"].to_numpy()[rows].all() and not adapted["lab_adapted"].to_numpy()[~rows].any()
    assert (adapted["lab_adaptation_panels"].to_numpy()[rows] == adaptation.panels["lab_never_seen"]).all()
    assert adapted["unknown_lab"].to_numpy()[rows].all()  # still says: not seen in training


def test_too_few_panels_are_flagged_not_adapted(fitted, batch, catalog):
    complete = (fitted.features_.compartments(batch) == "blood+endometrium").to_numpy()
    rows = np.zeros(len(batch), dtype=bool)
    rows[np.flatnonzero(complete)[: fitted.lab_min_panels - 1]] = True
    calls = fitted.call(new_lab(batch, catalog, rows))
    assert not calls["lab_adapted"].any()
    assert calls["unknown_lab"].to_numpy()[rows].all()


def _chunks(panel, size):
    empty = pd.DataFrame(columns=["row", "patient_id", "column", "value", "reason"])
    return [ValidatedChunk(panel.iloc[i:i + size], panel.iloc[i:i + size], empty) for i in range(0, len(panel), size)]


def _calls(fitted, panel, size, held_rows=200_000):
    parts = [calls for _, calls in scored_chunks(fitted, _chunks(panel, size), lambda: _chunks(panel, size), held_rows)]
    return pd.concat(parts).astype(object).set_index("patient_id").sort_index()


def test_calls_do_not_depend_on_chunking_or_row_order(fitted, batch, catalog):
    moved = new_lab(batch, catalog, np.arange(len(batch)) % 3 == 0)
    whole = _calls(fitted, moved, 50_000)
    assert whole["lab_adapted"].any()
    shuffled = moved.sample(frac=1.0, random_state=1)
    for calls in (_calls(fitted, moved, 7), _calls(fitted, shuffled, 113), _calls(fitted, moved, 97, held_rows=150)):
        pd.testing.assert_frame_equal(calls, whole)


def test_offsets_are_shrunk_to_zero_when_noise_explains_them():
    rng = np.random.default_rng(0)
    residuals = pd.DataFrame({"a": rng.normal(0.0, 1.0, 400), "b": rng.normal(0.5, 1.0, 400)})
    labs = pd.Series(["x"] * 200 + ["y"] * 200)
    residuals.loc[200:, "b"] -= 0.5  # lab y has no offset on b, lab x has +0.5
    usable = pd.DataFrame(True, index=residuals.index, columns=residuals.columns)
    offsets = shrunk_median_offsets(residuals, labs, usable, min_panels=30)
    assert offsets["x"]["b"] == pytest.approx(0.5, abs=0.2)
    assert abs(offsets["x"].get("a", 0.0)) < 0.1 and abs(offsets["y"].get("b", 0.0)) < 0.1
    assert shrunk_median_offsets(residuals, labs, usable, min_panels=201) == {}


def test_score_file_writes_what_the_chunks_are_called(fitted, batch, catalog, tmp_path):
    """score_file runs features, kernel and calls frame in three threads, a chunk apart: its files are
    those of calling each chunk in turn (here with a lab first seen mid-batch, so chunks are held)."""
    from rifml.contract import REJECT_COLUMNS
    from rifml.io.writer import AtomicCsvWriter
    from rifml.scoring import score_file

    moved = new_lab(batch, catalog, np.arange(len(batch)) >= 700)
    tally = score_file(fitted, _chunks(moved, 97), lambda: _chunks(moved, 97), tmp_path / "calls.csv", tmp_path / "rejects.csv")
    with AtomicCsvWriter(tmp_path / "expected.csv") as expected:
        for _, calls in scored_chunks(fitted, _chunks(moved, 97), lambda: _chunks(moved, 97)):
            expected.write(calls)
    assert (tmp_path / "calls.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
    assert pd.read_csv(tmp_path / "calls.csv")["lab_adapted"].sum() == len(batch) - 700
    assert tally.scored == len(batch) and list(pd.read_csv(tmp_path / "rejects.csv").columns) == REJECT_COLUMNS
