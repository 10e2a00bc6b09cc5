"""`rifml report`: cohort and patient pages, end to end on the command line with a real SQLite MLflow store."""

import base64
import html
import io
import re
import shutil
import sqlite3
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rifml.contract import censored_column
from rifml.errors import RifmlInputError
from rifml.report.render import _counts, drift_table
from rifml.report import (
    RESEARCH_USE,
    BandAxis,
    ModelCard,
    band_axis,
    build_cohort,
    describe_model,
    find_findings,
    lab_drift,
    load_interventions,
    patient_file_names,
    read_calls,
    read_panel_for_calls,
    read_reject_counts,
    waterfall,
    write_report,
)
from cli_support import rifml_in_process
from mlflow_support import SHARED_PANELS, copy_store

ODD_IDS = [
    "a/b/../../c",
    "患者-001",
    "<script>alert(1)</script>",
    "NA",
    'quote"comma,id',
    "Ünïcödé/Ω 🦀",
    "...",
    "x" * 300,
]
UNKNOWN_LAB = "lab_never_seen"
MODEL_URI = "models:/rifml-immune-profile/1"
SAFE_NAME = re.compile(r"^\d{5,}-[A-Za-z0-9_-]+\.html$")


def rifml(*args, cwd):
    # in this process: the report's pages are tested here, not the process (test_safety_cli runs `rifml report`)
    result = rifml_in_process(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def scored(trained_store, tmp_path_factory):
    """Score a batch holding odd ids and an unknown lab with the session's model (in a copy of its store, which
    the test searches for patient ids), then write the report with the CLI."""
    store = copy_store(trained_store, tmp_path_factory.mktemp("report"))
    work, uri = store.folder, store.uri
    rifml("simulate", "--n", 300, "--seed", 12, "--bad-share", 0.03, "--output", "batch.csv", "--truth", "truth.csv", cwd=work)
    batch = pd.read_csv(work / "batch.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(work / "truth.csv", dtype=str, keep_default_na=False)
    clean = np.flatnonzero((truth["corruption"] == "").to_numpy())
    batch.loc[clean[: len(ODD_IDS)], "patient_id"] = ODD_IDS
    batch.loc[clean[len(ODD_IDS)], "lab_id"] = UNKNOWN_LAB
    batch.to_csv(work / "batch.csv", index=False)
    rifml("score", "--input", "batch.csv", "--output", "calls.csv", "--rejects", "rejects.csv",
          "--model", MODEL_URI, "--tracking-uri", uri, cwd=work)
    result = rifml("report", "--input", "batch.csv", "--calls", "calls.csv", "--rejects", "rejects.csv",
                   "--output", "report", "--model", MODEL_URI, "--tracking-uri", uri, cwd=work)
    calls = pd.read_csv(work / "calls.csv", dtype=str, keep_default_na=False)
    return work, uri, calls, result


@pytest.fixture(scope="module")
def pages(scored):
    work = scored[0]
    index = (work / "report" / "index.html").read_text(encoding="utf-8")
    patients = {p.name: p.read_text(encoding="utf-8") for p in (work / "report" / "patients").iterdir()}
    return index, patients


@pytest.fixture(scope="module")
def profiler(scored):
    from rifml.tracking import connect, load_profiler

    connect(scored[1])
    return load_profiler(MODEL_URI)[0]


def linked_patients(index: str) -> dict[str, str]:
    """Patient id -> page file, from the links of the index's patient table."""
    return {html.unescape(text): href for href, text in re.findall(r'<a href="patients/([^"]+)">(.*?)</a>', index)}


def page_id(page: str) -> str:
    return html.unescape(re.search(r"<h1>Patient (.*?)</h1>", page, re.S).group(1))


# -- the CLI end to end ----------------------------------------------------------------------


def test_cli_writes_a_page_for_every_called_patient_linked_from_the_index(scored, pages):
    work, _, calls, result = scored
    index, patients = pages
    assert f"{len(calls):,} patient pages" in result.stdout
    links = linked_patients(index)
    assert set(links) == set(calls["patient_id"])
    assert set(links.values()) == set(patients)
    for patient, name in links.items():
        assert page_id(patients[name]) == patient


def test_every_image_is_an_embedded_png_that_decodes(pages):
    import matplotlib.image

    index, patients = pages
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', index)
    assert len(sources) >= 4  # probabilities, subtype heatmap, SHAP per profile, lab drift
    for page in [index, *patients.values()]:
        for source in re.findall(r'<img[^>]*\ssrc="([^"]*)"', page):
            assert source.startswith("data:image/png;base64,")
            image = matplotlib.image.imread(io.BytesIO(base64.b64decode(source.split(",", 1)[1])), format="png")
            assert image.shape[0] > 50 and image.shape[1] > 50
    assert not re.search(r"(src|href)=\"https?://", index + "".join(patients.values()))  # nothing from the network


def test_the_caveat_appears_wherever_a_treatment_is_named(pages):
    index, patients = pages
    interventions = load_interventions()
    treatments = [t for finding in interventions.findings for t in finding.treatments]
    named = 0
    for page in [index, *patients.values()]:
        text = html.unescape(page)
        if any(t in text for t in treatments):
            named += 1
            assert interventions.caveat in text
    assert named > 10  # the index and many patient pages name treatments


def test_research_use_statement_is_on_the_index_and_patient_pages(pages):
    index, patients = pages
    assert RESEARCH_USE in html.unescape(index)
    assert all(RESEARCH_USE in html.unescape(page) for page in patients.values())


def test_odd_patient_ids_get_safe_flat_file_names_and_are_escaped(scored, pages):
    work, _, calls, _ = scored
    index, patients = pages
    assert set(ODD_IDS) <= set(calls["patient_id"])
    assert all(SAFE_NAME.match(name) for name in patients)
    report = work / "report"
    assert sorted(p.name for p in report.iterdir()) == [".rifml-report", "index.html", "patients"]
    assert not any(p.is_dir() for p in (report / "patients").iterdir())
    for page in [index, *patients.values()]:
        assert "<script>alert(1)</script>" not in page
    links = linked_patients(index)
    assert page_id(patients[links["<script>alert(1)</script>"]]) == "<script>alert(1)</script>"


def test_patient_page_shows_the_call_its_probabilities_and_flags(scored, pages):
    _, _, calls, _ = scored
    index, patients = pages
    links = linked_patients(index)
    row = calls.iloc[5]
    page = patients[links[row["patient_id"]]]
    for profile in ["balanced", "hyperactive", "hypoactive", "mixed"]:
        assert f"{100 * float(row[f'prob_{profile}']):.1f}%" in page
    assert row["subtype"] in page and row["compartments"] in page
    unknown = calls[calls["unknown_lab"] == "True"]
    assert len(unknown) == 1
    assert "unknown lab" in patients[links[unknown["patient_id"].iloc[0]]]
    endometritis = calls[calls["possible_chronic_endometritis"] == "True"]["patient_id"]
    assert len(endometritis) > 0
    for patient in endometritis:
        assert "possible chronic endometritis" in patients[links[patient]]
    quiet = calls[(calls["possible_chronic_endometritis"] == "False") & (calls["unknown_lab"] == "False")
                  & (calls["outside_training_range"] == "False")]["patient_id"]
    assert "No flags" in patients[links[quiet.iloc[0]]]


def test_index_summarizes_rejects_and_describes_the_registered_model(scored, pages):
    work, uri, _, _ = scored
    index, _ = pages
    rejects = pd.read_csv(work / "rejects.csv", dtype=str, keep_default_na=False)
    assert len(rejects) > 0
    for reason, count in rejects["reason"].value_counts().items():
        assert re.search(rf"<td>{re.escape(html.escape(reason))}</td><td class=\"num\">{count}</td>", index)
    from mlflow import MlflowClient

    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("rifml-immune-profile", "1")
    assert "rifml-immune-profile version 1" in index
    assert version.run_id in index
    assert "macro-F1 (cross-validated)" in index
    assert f"trained on</dt><dd>{SHARED_PANELS:,} panels" in index


def test_index_drift_table_shows_each_lab_once_with_its_own_values_under_each_header(scored, pages, profiler):
    work, index = scored[0], pages[0]
    section = index[index.index('id="drift"'):]
    section = section[:section.index("</table>")]
    header = [html.unescape(m) for m in re.findall(r'<th class="num">([^<]*): batch</th>', section)]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>(.*?)</tr>", section, re.S)
    labs = [html.unescape(lab) for lab, _, _ in rows]
    assert len(labs) == len(set(labs)) and UNKNOWN_LAB in labs and len(labs) > 1
    calls = read_calls(work / "calls.csv", profiler.catalog_)
    panel, _ = read_panel_for_calls(work / "batch.csv", profiler.catalog_, calls["patient_id"])
    drift = lab_drift(panel, profiler).set_index(["lab", "marker"])
    for lab, (_, known, cells) in zip(labs, rows):
        assert known == ("yes" if lab in profiler.features_.known_labs_ else "no: not normalized"), lab
        batch = re.findall(r'<td class="num">([^<]*?) <span class="muted small">\(n=(\d+)\)</span>', cells)
        expected = [drift.loc[(lab, m)] for m in header]
        assert [int(n) for _, n in batch] == [int(e["n"]) for e in expected], lab
        assert [text for text, _ in batch] == ["–" if np.isnan(e["batch_pct"]) else "%+.0f%%" % e["batch_pct"]
                                               for e in expected], lab


def test_patient_ids_never_reach_mlflow(scored):
    work = scored[0]
    dump = "\n".join(sqlite3.connect(work / "mlflow.db").iterdump())
    for path in (work / "mlartifacts").rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".txt", ".yaml", ""}:
            dump += path.read_text(errors="ignore")
    assert not [i for i in ODD_IDS if i in dump]


# -- the parts, in process ---------------------------------------------------------------------


def test_report_detects_calls_the_model_does_not_reproduce(scored, profiler):
    work = scored[0]
    catalog = profiler.catalog_
    calls = read_calls(work / "calls.csv", catalog).iloc[:30].copy()
    panel, reasons = read_panel_for_calls(work / "batch.csv", catalog, calls["patient_id"])
    data = build_cohort(profiler, panel, calls, ModelCard("test"), reasons, "test", load_interventions())
    assert data.changed_calls == 0
    calls.loc[3, ["prob_balanced", "prob_hyperactive"]] = calls.loc[3, ["prob_hyperactive", "prob_balanced"]].to_numpy()
    data = build_cohort(profiler, panel, calls, ModelCard("test"), reasons, "test", load_interventions())
    assert data.changed_calls == 1


def test_model_card_says_why_metrics_are_missing_when_the_run_is_not_found(profiler):
    card = describe_model("models:/no-such-model/7", {"catalog_version": "1.0"})
    assert card.metrics == {} and card.registered_name is None
    assert "not reachable" in card.tracking_note
    assert describe_model(MODEL_URI, {}).metrics["cv_macro_f1"] > 0


def test_report_refuses_calls_from_another_panel_file(scored, profiler):
    work = scored[0]
    other = work / "other.csv"
    pd.read_csv(work / "batch.csv", dtype=str, keep_default_na=False).iloc[:40].to_csv(other, index=False)
    calls = read_calls(work / "calls.csv", profiler.catalog_)
    with pytest.raises(RifmlInputError, match="not among its accepted rows"):
        read_panel_for_calls(other, profiler.catalog_, calls["patient_id"])


def test_waterfall_steps_add_up_to_the_total_with_the_rest_summed():
    values = np.array([0.5, -1.2, 0.05, 0.3, 0.01, -0.02, 0.2, 0.1, 0.04])
    chart = waterfall(values, [f"m{i}" for i in range(len(values))], bars=4)
    labels = [s["label"] for s in chart["steps"]]
    assert labels == ["m1", "m0", "m3", "m6", "5 other markers"]
    assert [s["value"] for s in chart["steps"]] == ["-1.20", "+0.50", "+0.30", "+0.20", "+0.18"]
    assert chart["total"]["value"] == f"{values.sum():+.2f}"
    plot = (chart["plot_start"], chart["plot_start"] + chart["plot_width"])
    assert all(plot[0] - 0.1 <= s["x"] and s["x"] + s["width"] <= plot[1] + 1.1 for s in chart["steps"])


def test_lab_drift_answers_a_lab_without_measured_values_with_n_0_and_no_median(catalog):
    """A lab whose panels hold none of a drifting marker (or only censored cells) gets n = 0 and no median
    (the page shows "–"), computed without numpy's "Mean of empty slice" warning."""
    drifting = [m.name for m in catalog.numeric_markers if m.drifts]
    first = drifting[0]
    panel = pd.DataFrame({catalog.lab_column: ["lab_a"] * 3 + ["lab_b"] * 2 + ["lab_c"],
                          **{m: [10.0, 20.0, 40.0, np.nan, np.nan, 5.0] for m in drifting}})
    panel[censored_column(first)] = [False, False, False, False, False, True]  # lab_c's only cell is "<5"
    profiler = SimpleNamespace(catalog_=catalog, features_=SimpleNamespace(lab_shifts_={"lab_a": {first: 0.1}},
                                                                            known_labs_=["lab_a"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drift = lab_drift(panel, profiler).set_index(["lab", "marker"])
    assert drift.loc[("lab_a", first), "n"] == 3 and drift.loc[("lab_a", first), "batch_pct"] == pytest.approx(0.0)
    assert drift.loc[("lab_a", first), "learned_pct"] == pytest.approx(100 * np.expm1(0.1))
    for lab in ("lab_b", "lab_c"):
        assert drift.loc[(lab, first), "n"] == 0 and np.isnan(drift.loc[(lab, first), "batch_pct"])
    if len(drifting) > 1:  # lab_c's uncensored cell of another marker is measured
        assert drift.loc[("lab_c", drifting[1]), "n"] == 1
    # a batch in which no lab measured the marker at all: every lab n = 0, still no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = lab_drift(panel.assign(**{first: np.nan}), profiler)
    assert (empty.loc[empty["marker"] == first, "n"] == 0).all()
    assert empty.loc[empty["marker"] == first, "batch_pct"].isna().all()


def test_drift_table_cells_sit_under_their_marker_s_header(catalog):
    """The header follows the catalog (pb_* before em_*), a pivot sorts by name: each cell must be its column's;
    and a batch with an unknown lab still shows each lab once."""
    drifting = [m.name for m in catalog.numeric_markers if m.drifts]
    assert drifting != sorted(drifting)  # else this test could not tell the two orders apart
    labs = ["lab_b", "lab_a", "lab_new"]
    drift = pd.DataFrame([{"lab": lab, "marker": m, "n": 10 * i + j, "batch_pct": float(100 * i + j),
                           "learned_pct": np.nan if lab == "lab_new" else float(-j), "known": lab != "lab_new"}
                          for i, lab in enumerate(labs) for j, m in enumerate(drifting)])
    header, rows = drift_table(drift)
    assert header == drifting
    assert [row["lab"] for row in rows] == sorted(labs)  # one row per lab, known or not
    for row in rows:
        i = labs.index(row["lab"])
        assert row["known"] == (row["lab"] != "lab_new")
        assert [c["batch"] for c in row["cells"]] == [float(100 * i + j) for j in range(len(drifting))]
        assert [c["n"] for c in row["cells"]] == [10 * i + j for j in range(len(drifting))]
    assert drift_table(drift.iloc[:0]) == ([], [])


def test_profile_counts_list_every_profile_with_zero_where_nobody_was_called():
    profiles = ["balanced", "hyperactive", "hypoactive", "mixed"]
    counted = _counts(pd.Series(["hyperactive", "balanced", "hyperactive"]), profiles)
    assert [(row["name"], row["n"]) for row in counted] == [("balanced", 1), ("hyperactive", 2), ("hypoactive", 0), ("mixed", 0)]
    assert [row["pct"] for row in counted] == pytest.approx([100 / 3, 200 / 3, 0, 0])
    assert [row["n"] for row in _counts(pd.Series([], dtype=object), profiles)] == [0, 0, 0, 0]
    assert [row["name"] for row in _counts(pd.Series(["b", "a", "b"]))] == ["b", "a"]  # no order: values seen, most first


@pytest.mark.parametrize("reader, content, words", [
    ("rejects", None, "cannot read the rejects file"),
    ("rejects", b"", "cannot read the rejects file"),
    ("rejects", b"\xff\xfe\x00 not utf-8", "cannot read the rejects file"),
    ("rejects", b"row,patient_id,column\n2,P1,pb_nk_pct\n", "not a rifml rejects file (no reason column)"),
    ("calls", None, "cannot read the calls file"),
    ("calls", b"", "cannot read the calls file"),
    ("calls", b"patient_id,immune_profile\n", "no calls to report"),
])
def test_unreadable_calls_and_rejects_files_are_one_line_errors(tmp_path, catalog, reader, content, words):
    path = tmp_path / f"{reader}.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RifmlInputError, match=re.escape(words)) as error:
        read_reject_counts(path) if reader == "rejects" else read_calls(path, catalog)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_reject_counts_read_ids_and_reasons_as_written(tmp_path):
    path = tmp_path / "rejects.csv"
    path.write_text("row,patient_id,column,value,reason,all_problems\n2,NA,pb_nk_pct,-1,negative value,negative value\n"
                    "3,,,,missing patient_id,missing patient_id\n4,NA,pb_nk_pct,x,negative value,negative value\n",
                    encoding="utf-8")
    assert read_reject_counts(path) == {"negative value": 2, "missing patient_id": 1}


def test_patient_file_names_are_unique_safe_and_keep_order():
    ids = ["a/b", "a-b", "患者", "", "../../etc/passwd", "a/b "]
    names = patient_file_names(ids)
    assert len(set(names)) == len(ids)
    assert all(SAFE_NAME.match(n) for n in names)
    assert names[0] == "00001-a-b.html" and names[2] == "00003-patient.html"


def test_band_axis_is_logarithmic_where_the_catalog_says_and_holds_the_band(catalog):
    marker = catalog.by_name["pb_nk_pct"]
    axis = band_axis(marker, (1.0, 60.0), 0.5)
    assert isinstance(axis, BandAxis) and axis.log
    low, high = axis.fraction(np.array(marker.reference_band))
    assert 0 < low < high < 1
    # equal ratios are equal distances on a log axis
    a, b, c = axis.fraction(np.array([2.0, 4.0, 8.0]))
    assert b - a == pytest.approx(c - b)
    assert axis.fraction(np.array([0.0]))[0] < 0  # zero sits beyond the left edge
    serum = catalog.by_name["serum_il6_pg_ml"]  # band starts at 0: no log of 0
    assert np.isfinite(band_axis(serum, (0.0, 80.0), 0.25).fraction(np.array([5.0]))).all()


def test_findings_need_the_evidence_and_a_matching_call(catalog):
    interventions = load_interventions()
    markers = [m.name for m in catalog.numeric_markers]
    positions = pd.DataFrame(0.0, index=range(4), columns=markers)
    positions.loc[[0, 1], "em_unk_cd56_pct"] = -1.0  # under-activated endometrium
    positions.loc[2, "pb_th1_th2_ifng_il4"] = 1.0
    called = np.array(["hypoactive", "balanced", "hyperactive", "hyperactive"], dtype=object)
    incompatible = np.array([False, False, False, True])
    hits = {h.finding.key: h.applies for h in find_findings(positions, called, incompatible, catalog, interventions)}
    assert hits["uterine_hypoactive"].tolist() == [True, False, False, False]
    assert hits["th1_th2_high"].tolist() == [False, False, True, False]
    assert hits["nk_high_or_kir_hla_c"].tolist() == [False, False, False, True]
    assert not hits["uterine_hyperactive"].any()


def test_every_finding_can_match_some_patient_in_this_catalog(catalog):
    """A selector that picks no marker (a typo in axis or compartment, a signal no marker has) would
    silently never list its treatments: each finding must have some evidence to find."""
    positions = pd.DataFrame(0.0, index=[0], columns=[m.name for m in catalog.numeric_markers])
    for finding in load_interventions().findings:
        hits = find_findings(positions, np.array([finding.profiles[0]], dtype=object), np.array([True]), catalog,
                             load_interventions().model_copy(update={"findings": (finding,)}))[0]
        assert hits.evidence, f"finding {finding.key} has nothing to match in the catalog"
        if finding.nk_hla_c_incompatibility:
            assert catalog.interactions, f"finding {finding.key} needs the catalog's NK/HLA-C interaction"


@pytest.mark.parametrize(
    "finding, words",
    [
        ({"key": "k", "finding": "f", "treatments": ["t"], "profiles": ["hyperactive"]}, "needs out_of_band"),
        ({"key": "k", "finding": "f", "treatments": ["t"], "profiles": ["calm"],
          "out_of_band": {"signal": "hyperactive"}}, "profiles"),
        ({"key": "k", "finding": "f", "treatments": ["t"], "profiles": ["hyperactive"],
          "out_of_band": {"signal": "hyperactive", "organ": "blood"}}, "organ"),
    ],
)
def test_malformed_interventions_config_is_one_clear_error(tmp_path, finding, words):
    import yaml

    path = tmp_path / "interventions.yaml"
    path.write_text(yaml.safe_dump({"source": "s", "caveat": "c", "findings": [finding]}))
    with pytest.raises(RifmlInputError, match="malformed") as info:
        load_interventions(path)
    assert words in str(info.value)


def test_write_report_replaces_an_earlier_report_but_refuses_other_folders(tmp_path):
    target = tmp_path / "out"
    write_report(target, "<p>one</p>", iter([("00001-a.html", "a"), ("00002-b.html", "b")]))
    write_report(target, "<p>two</p>", iter([("00001-c.html", "c")]))
    assert sorted(p.name for p in (target / "patients").iterdir()) == ["00001-c.html"]
    assert (target / "index.html").read_text() == "<p>two</p>"
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    with pytest.raises(RifmlInputError, match="not an earlier rifml report"):
        write_report(foreign, "<p/>", iter([]))
    assert (foreign / "thesis.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


# -- what a browser shows ---------------------------------------------------------------------------


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def screenshot(page: Path, out: Path, profile: Path) -> np.ndarray:
    from PIL import Image

    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--window-size=1280,1600",
         f"--screenshot={out}", page.as_uri()],
        capture_output=True, timeout=120, check=False,
    )
    assert out.exists(), f"chromium wrote no screenshot of {page.name}"
    return np.asarray(Image.open(out).convert("L"), dtype=float)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`): browser rendering not checked")
def test_pages_render_in_a_headless_browser(scored, pages, tmp_path):
    pytest.importorskip("PIL", reason="Pillow reads the screenshots")
    work = scored[0]
    first_patient = sorted((work / "report" / "patients").iterdir())[0]
    for page in [work / "report" / "index.html", first_patient]:
        pixels = screenshot(page, tmp_path / f"{page.stem}.png", tmp_path / "chromium-profile")
        assert pixels.shape == (1600, 1280)
        assert pixels.std() > 20  # not a blank page
        assert (pixels < 128).mean() > 0.01  # there is dark ink: text and plots
