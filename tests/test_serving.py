"""REST: the registered model behind `mlflow models serve` answers the calls contract for posted panels."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_support import rifml_in_process
from mlflow_support import mlflow_store

from rifml.pipeline import calls_columns, profile_columns
from rifml.contract import REJECT_COLUMNS, REJECT_REASON, REJECTS_REASON, REJECTS_ROW
from rifml.serving import REJECT_DETAILS, score_frame

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
MODEL_URI = "models:/rifml-immune-profile@champion"
STARTUP_SECONDS = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_ping(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    pytest.fail(f"no answer on {url}/ping within {STARTUP_SECONDS} s:\n{log.read_text()[-2000:]}")


def stop_group(server: subprocess.Popen) -> None:
    """The server forks uvicorn: stop the whole process group, forcefully if it lingers."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=15)
    except ProcessLookupError:
        pass



@pytest.fixture(scope="module")
def store(trained_store, tmp_path_factory):
    """The session's trained store (read only: serving loads the champion) and a 40-panel batch."""
    work = tmp_path_factory.mktemp("serving")
    simulated = rifml_in_process("simulate", "--n", 40, "--seed", 12, "--output", "batch.csv", cwd=work)
    assert simulated.returncode == 0, simulated.stderr
    return work, trained_store.uri


@pytest.fixture(scope="module")
def server(store):
    work, uri = store
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # `serve` execs uvicorn by name, so the venv's bin must be on PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = work / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", MODEL_URI, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_ping(url, process, log)
        yield url
    finally:
        stop_group(process)


@pytest.fixture(scope="module")
def pyfunc(store):
    import mlflow

    with mlflow_store(store[1]):
        return mlflow.pyfunc.load_model(MODEL_URI)


@pytest.fixture(scope="module")
def panels(store, catalog):
    """Good rows (one with a censored cell), a corrupt row, and a blood-only partial panel, as text."""
    batch = pd.read_csv(store[0] / "batch.csv", dtype=str, keep_default_na=False)
    good = batch.iloc[:5].copy()
    censorable = next(m.name for m in catalog.numeric_markers if m.censorable and good[m.name].iloc[1] not in ("", None))
    good.loc[good.index[1], censorable] = "<" + good[censorable].iloc[1].lstrip("<")
    percent = next(m.name for m in catalog.numeric_markers if m.kind == "percent" and batch[m.name].iloc[5] != "")
    corrupt = batch.iloc[[5]].assign(patient_id="BAD-1", **{percent: "-3"})
    partial = batch.iloc[[6]].assign(patient_id="PARTIAL-1")
    for marker in catalog.compartment_markers("endometrium"):
        partial[marker.name] = ""
    frame = pd.concat([good, corrupt, partial], ignore_index=True)
    return frame, {"corrupt": 5, "partial": 6, "percent": percent}


def post(url: str, payload: dict) -> tuple[int, object]:
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def answer(url: str, payload: dict) -> pd.DataFrame:
    status, body = post(url, payload)
    assert status == 200, body
    return pd.DataFrame(body["predictions"])


def as_numbers(frame: pd.DataFrame) -> list[dict]:
    """Records whose numeric cells are JSON numbers (censors like "<1.0" and words stay text)."""

    def cell(text: str):
        if text == "":
            return None
        try:
            return float(text)
        except ValueError:
            return text

    return [{column: cell(value) for column, value in row.items()} for row in frame.to_dict(orient="records")]


def assert_same_answer(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    for column in expected.columns:
        if pd.api.types.is_float_dtype(expected[column]):
            np.testing.assert_allclose(got[column].astype(float), expected[column], rtol=0, atol=1e-9, err_msg=column)
        else:
            assert got[column].fillna("").astype(str).tolist() == expected[column].fillna("").astype(str).tolist(), column


def test_split_payload_answers_the_calls_contract(server, panels, catalog):
    frame, where = panels
    got = answer(server, {"dataframe_split": frame.to_dict(orient="split")})
    assert len(got) == len(frame)
    assert set(calls_columns(catalog)) | {"status", "reject_reason"} <= set(got.columns)
    assert got["patient_id"].tolist() == frame["patient_id"].tolist()
    scored = got[got["status"] == "scored"]
    assert len(scored) == len(frame) - 1
    assert set(scored["immune_profile"]) <= set(catalog.profiles)
    # each probability is reported to 6 decimals
    np.testing.assert_allclose(scored[profile_columns(catalog)].sum(axis=1), 1.0, atol=len(catalog.profiles) * 0.5e-6)
    bad = got.iloc[where["corrupt"]]
    assert (bad["status"], bad["reject_reason"], bad["reject_column"]) == ("rejected", "negative value", where["percent"])
    assert got.iloc[where["partial"]]["compartments"] == "blood"


def test_rest_answer_equals_score_frame_of_the_loaded_model(server, panels, pyfunc):
    frame, _ = panels
    expected = score_frame(pyfunc.unwrap_python_model().profiler, frame)
    assert_same_answer(answer(server, {"dataframe_split": frame.to_dict(orient="split")}), expected)


def test_records_with_numbers_give_the_same_answer_as_text(server, panels, pyfunc):
    frame, where = panels
    records = as_numbers(frame)
    assert any(isinstance(v, float) for v in records[0].values()) and any(
        isinstance(v, str) and v.startswith("<") for v in records[1].values()
    )
    expected = score_frame(pyfunc.unwrap_python_model().profiler, frame)
    got = answer(server, {"dataframe_records": records})
    assert_same_answer(got.drop(columns="reject_value"), expected.drop(columns="reject_value"))
    assert got.loc[where["corrupt"], "reject_value"] == "-3.0"  # the cell as posted


def test_a_panel_with_only_some_columns_is_called(server, catalog):
    blood = {m.name: m for m in catalog.compartment_markers("blood") if m.is_numeric}
    row = {"patient_id": "COLUMNS-1", **{name: "<1.0" if m.censorable else 5.0 for name, m in list(blood.items())[:4]}}
    got = answer(server, {"dataframe_records": [row]})
    assert got.loc[0, "status"] == "scored", got.loc[0, "reject_reason"]
    assert got.loc[0, "immune_profile"] in catalog.profiles
    assert got.loc[0, "compartments"] == "blood"


def test_missing_patient_id_column_is_a_client_error(server):
    status, body = post(server, {"dataframe_records": [{"pb_nk_pct": "12"}]})
    assert status == 400
    assert "patient_id" in body["message"]


def test_pyfunc_predict_matches_score_frame_for_text_and_numbers(pyfunc, panels):
    frame, where = panels
    expected = score_frame(pyfunc.unwrap_python_model().profiler, frame)
    assert_same_answer(pyfunc.predict(frame), expected)
    numbers = pd.DataFrame(as_numbers(frame), dtype=object)
    got = pyfunc.predict(numbers)
    assert_same_answer(got.drop(columns="reject_value"), expected.drop(columns="reject_value"))
    assert got.loc[where["corrupt"], "status"] == "rejected"


def test_the_answer_carries_every_rejects_file_field_but_the_row_and_id():
    """The rejects-file field names REJECT_DETAILS renames are rifml.contract's; none is left out or invented."""
    answered = set(REJECT_DETAILS) | {REJECTS_REASON}
    assert answered == set(REJECT_COLUMNS) - {REJECTS_ROW, "patient_id"}
    assert REJECT_REASON not in REJECT_DETAILS.values() and len(set(REJECT_DETAILS.values())) == len(REJECT_DETAILS)


def test_the_pyfunc_answers_as_local_scoring_of_the_same_rows(pyfunc, panels, catalog, tmp_path):
    """One scoring path: a request's answer equals what `rifml score` writes for the same rows as a file."""
    from rifml.io.reader import PanelFile, validated_chunks
    from rifml.scoring import score_file

    frame, _ = panels
    profiler = pyfunc.unwrap_python_model().profiler
    frame.to_csv(tmp_path / "rows.csv", index=False)
    panel_file = PanelFile(tmp_path / "rows.csv", catalog)
    tally = score_file(profiler, validated_chunks(panel_file), lambda: validated_chunks(panel_file),
                       tmp_path / "calls.csv", tmp_path / "rejects.csv")
    calls = pd.read_csv(tmp_path / "calls.csv", dtype=str, keep_default_na=False)
    rejects = pd.read_csv(tmp_path / "rejects.csv", dtype=str, keep_default_na=False)
    answer = score_frame(profiler, frame)
    scored, rejected = answer[answer["status"] == "scored"], answer[answer["status"] == "rejected"]
    assert tally.scored == len(scored) == len(calls) and sum(tally.reasons.values()) == len(rejects) == len(rejected) > 0
    assert rejects["row"].astype(int).tolist() == (rejected.index + 2).tolist()
    assert rejects["reason"].tolist() == rejected["reject_reason"].tolist()
    for field, name in REJECT_DETAILS.items():  # the answer renames the file's fields, cell for cell
        assert rejects[field].tolist() == rejected[name].tolist(), field
    for column in calls_columns(catalog):
        if pd.api.types.is_numeric_dtype(scored[column]):
            np.testing.assert_allclose(pd.to_numeric(calls[column].replace("", np.nan)), scored[column].astype(float),
                                       rtol=0, atol=1e-12, err_msg=column)
        else:
            text = scored[column].astype(object).where(scored[column].notna(), "").astype(str)
            assert calls[column].tolist() == text.tolist(), column
