"""`rifml ui`: the MLflow UI on the training store, reached over HTTP, stopped cleanly."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from mlflow_support import SHARED_EXPERIMENT, copy_store
from rifml.ui import server_command

RIFML = str(Path(sys.executable).parent / "rifml")


def rifml(*args, cwd):
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([RIFML, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=environment)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url, body=None):
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def fetch_json(url, body=None):
    return json.loads(fetch(url, body)[2])


@pytest.fixture(scope="module")
def store(trained_store, tmp_path_factory):
    """A copy of the session's store: one training run (champion), which the UI server may write beside."""
    store = copy_store(trained_store, tmp_path_factory.mktemp("ui"))
    return store.folder, store.uri, store.run_id


@pytest.fixture(scope="module")
def ui(store, tmp_path_factory):
    """`rifml ui` in its own process group; teardown kills it and anything it started, whatever happened."""
    work, uri, _ = store
    port = free_port()
    logs = tmp_path_factory.mktemp("ui-logs")
    stdout, stderr = (logs / "stdout").open("w+"), (logs / "stderr").open("w+")
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen([RIFML, "ui", "--tracking-uri", uri, "--port", str(port)], cwd=logs,
                               stdout=stdout, stderr=stderr, env=environment, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    started = {"process": process, "base": base, "stdout": logs / "stdout", "stderr": logs / "stderr", "descendants": []}
    try:
        deadline = time.monotonic() + 60
        # Ready for the tests when the pages answer and the command has printed its links (the
        # champion's run is the last one; the store has a champion): the server answers a moment
        # before `rifml ui` has looked that run up and printed it.
        while not (page_answers(base) and "champion's training run:" in (logs / "stdout").read_text()):
            assert process.poll() is None, f"rifml ui quit: {(logs / 'stderr').read_text()}"
            assert time.monotonic() < deadline, "the UI did not answer and print its links within 60 s"
            time.sleep(0.5)
        started["descendants"] = psutil.Process(process.pid).children(recursive=True)
        yield started
    finally:
        kill_everything(process, started["descendants"])
        stdout.close()
        stderr.close()


def page_answers(base) -> bool:
    try:
        return fetch(f"{base}/health")[0] == 200
    except OSError:
        return False


def kill_everything(process, descendants):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for child in descendants:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # the server leads its own group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def test_server_command_is_lean_local_and_serves_artifacts_beside_the_db(tmp_path):
    command = server_command(f"sqlite:///{tmp_path / 'mlflow.db'}", "127.0.0.1", 5555)
    option = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
    assert option["--workers"] == "1"
    assert option["--host"] == "127.0.0.1"
    root = (tmp_path / "mlartifacts").as_uri()
    assert option["--default-artifact-root"] == option["--artifacts-destination"] == root


@pytest.mark.slow
def test_ui_serves_the_page_and_the_training_experiment(ui):
    status, content_type, body = fetch(f"{ui['base']}/")
    assert status == 200 and content_type.startswith("text/html")
    assert b"<html" in body.lower()
    experiments = fetch_json(f"{ui['base']}/ajax-api/2.0/mlflow/experiments/search", {"max_results": 100})
    assert SHARED_EXPERIMENT in {e["name"] for e in experiments["experiments"]}


@pytest.mark.slow
def test_ui_finds_the_training_run_and_serves_its_plots(ui, store):
    work, _, run_id = store
    experiments = fetch_json(f"{ui['base']}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    experiment_id = next(e["experiment_id"] for e in experiments if e["name"] == SHARED_EXPERIMENT)
    runs = fetch_json(f"{ui['base']}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    listed = fetch_json(f"{ui['base']}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run_id}&path=plots")
    assert {"plots/confusion_matrix.png", "plots/k_selection.png", "plots/shap_summary.png"} <= {f["path"] for f in listed["files"]}
    status, content_type, png = fetch(f"{ui['base']}/get-artifact?path=plots/confusion_matrix.png&run_uuid={run_id}")
    assert status == 200 and png.startswith(b"\x89PNG")
    on_disk = next((work / "mlartifacts").rglob("confusion_matrix.png"))
    assert png == on_disk.read_bytes()


@pytest.mark.slow
def test_ui_prints_direct_links(ui, store):
    _, _, run_id = store
    printed = ui["stdout"].read_text()
    assert f"{ui['base']}/#/models/rifml-immune-profile" in printed
    assert f"{ui['base']}/#/experiments" in printed
    assert re.search(rf"{re.escape(ui['base'])}/#/experiments/\d+/runs/{run_id}", printed)


@pytest.mark.slow
def test_ctrl_c_stops_the_whole_server_group(ui):
    """Runs last: it stops the module's server."""
    process, descendants = ui["process"], ui["descendants"]
    assert descendants, "rifml ui started no server process"
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(30) == 0
    gone, alive = psutil.wait_procs(descendants, timeout=15)
    assert not alive
    assert not page_answers(ui["base"])
    assert "MLflow UI stopped" in ui["stderr"].read_text()


def test_port_taken_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "mlflow.db").touch()  # the port is checked before the store is opened
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = rifml("ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", port, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"rifml: error: port {port} on 127.0.0.1 is already in use: choose another with --port"
    )
    assert "Traceback" not in result.stderr

