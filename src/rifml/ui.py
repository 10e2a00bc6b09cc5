"""The MLflow UI on the store that `rifml train` and `rifml score` use.

A lean ``mlflow server`` (one worker, no job runner: 2 processes instead of 15)
runs in its own process group, so stopping it stops every process it started,
and Ctrl-C in the terminal reaches only rifml, which then stops the group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rifml.errors import RifmlInputError
from rifml.tracking import QUIET_ENV, _artifact_root, registered_model_name, require_store

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass
class UiServer:
    """A running MLflow UI server.

    Attributes
    ----------
    process : subprocess.Popen
        The ``mlflow server`` process, leader of its own process group.
    url : str
        Base address to open in a browser, e.g. ``http://127.0.0.1:5000``.
    log_path : Path
        Where the server's output goes.
    """

    process: subprocess.Popen
    url: str
    log_path: Path


def server_command(uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line for a store, with artifacts served from beside a SQLite db.

    Parameters
    ----------
    uri : str
        Resolved tracking URI (see ``rifml.tracking.resolve_tracking_uri``).
    host, port :
        Interface and port to bind.

    Returns
    -------
    list of str
    """
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    root = _artifact_root(uri)
    if root:
        # Experiments made in the UI then keep artifacts where `rifml train` puts them, as plain
        # file URIs that direct SQLite clients can also read (not mlflow-artifacts:/ proxies).
        command += ["--default-artifact-root", root, "--artifacts-destination", root]
    return command


def check_store(uri: str) -> None:
    """Refuse URIs the UI cannot serve, and SQLite stores that do not exist yet.

    Raises
    ------
    RifmlInputError
        For an http(s) URI (already a server) or a missing SQLite file (which
        the server would otherwise silently create, empty).
    """
    if uri.startswith(("http://", "https://")):
        raise RifmlInputError(f"{uri} is already a tracking server: open it in a browser")
    require_store(uri)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (a socket may still be lingering in TIME_WAIT).

    Raises
    ------
    RifmlInputError
        When ``host`` is not an address of this machine.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise RifmlInputError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    with socket.socket(family, kind, proto) as probe:
        # Same option uvicorn sets: a recently stopped server's port counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            return False
    return True


def base_url(host: str, port: int) -> str:
    """The address a browser on this machine should open (wildcard binds are reached via loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def start_ui(uri: str, host: str = "127.0.0.1", port: int = 5000, *, timeout: float = 60.0) -> UiServer:
    """Start the MLflow UI on a store and wait until it answers.

    Parameters
    ----------
    uri : str
        Resolved tracking URI.
    host, port :
        Where to listen; 127.0.0.1 keeps it on this machine.
    timeout : float
        Seconds to wait for the first answer.

    Returns
    -------
    UiServer

    Raises
    ------
    RifmlInputError
        Port taken, unusable store, or a server that quit while starting.
    TimeoutError
        No answer within ``timeout``.
    """
    check_store(uri)
    if not port_is_free(host, port):
        raise RifmlInputError(f"port {port} on {host} is already in use: choose another with --port")
    handle, log_name = tempfile.mkstemp(prefix="rifml-ui-", suffix=".log")
    process = subprocess.Popen(
        server_command(uri, host, port),
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**QUIET_ENV, **os.environ, **LEAN_ENV},  # the user's own MLflow settings win, except the lean one
        start_new_session=True,
    )
    os.close(handle)
    server = UiServer(process, base_url(host, port), Path(log_name))
    try:
        _wait_until_ready(server, timeout)
    except BaseException as exc:
        stop_ui(server, keep_log=not isinstance(exc, KeyboardInterrupt))
        raise
    return server


def _wait_until_ready(server: UiServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RifmlInputError(f"the MLflow server quit while starting: {last_log_line(server)} (log: {server.log_path})")
        if _answers(f"{server.url}/health"):
            return
        time.sleep(0.25)
    raise TimeoutError(f"the MLflow server did not answer within {timeout:.0f} s (log: {server.log_path})")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def last_log_line(server: UiServer) -> str:
    """The server's last non-empty output line (usually the reason it stopped)."""
    lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def stop_ui(server: UiServer, timeout: float = 10.0, keep_log: bool = False) -> None:
    """Stop every process of the server's group: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Parameters
    ----------
    server : UiServer
    timeout : float
    keep_log : bool
        Keep the server's log file (for a failure report); removed otherwise.
    """
    group = server.process.pid
    _signal_group(group, signal.SIGTERM)
    try:
        server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(group, signal.SIGKILL)
        server.process.wait()
    if not _group_gone(group, timeout):
        _signal_group(group, signal.SIGKILL)
    if not keep_log:
        server.log_path.unlink(missing_ok=True)


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _group_gone(group: int, timeout: float) -> bool:
    """Wait for the leader's children (e.g. the uvicorn worker) to leave the group too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@contextmanager
def running_ui(uri: str, host: str = "127.0.0.1", port: int = 5000, *, timeout: float = 60.0) -> Iterator[UiServer]:
    """Start the UI (see ``start_ui``) and stop its whole process group on leaving, whatever happens.

    Meanwhile SIGINT and SIGTERM raise KeyboardInterrupt, so that a ``kill`` of
    rifml cleans up like Ctrl-C does (SIGINT explicitly too: a shell starting
    rifml in the background hands it down ignored).
    """
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = start_ui(uri, host, port, timeout=timeout)
        try:
            yield server
        finally:
            stop_ui(server)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def wait_for_interrupt(server: UiServer) -> None:
    """Block until Ctrl-C (then return), or raise if the server stops on its own.

    Raises
    ------
    RuntimeError
        When the server process ends by itself.
    """
    try:
        server.process.wait()
    except KeyboardInterrupt:
        return
    raise RuntimeError(f"the MLflow server stopped by itself: {last_log_line(server)} (log: {server.log_path})")


def ui_links(server: UiServer, registered_model: str | None = None) -> dict[str, str]:
    """Direct links into the UI (classic runs and models sit outside its GenAI start page).

    Returns
    -------
    dict
        Label -> URL: the registered model, the experiments list and, when the
        alias ``champion`` exists, the champion's training run.
    """
    registered_model = registered_model or registered_model_name()
    links = {
        "registered model": f"{server.url}/#/models/{registered_model}",
        "experiments": f"{server.url}/#/experiments",
    }
    champion = _champion_run(server.url, registered_model)
    if champion:
        experiment_id, run_id = champion
        links["champion's training run"] = f"{server.url}/#/experiments/{experiment_id}/runs/{run_id}"
    return links


def _champion_run(url: str, registered_model: str) -> tuple[str, str] | None:
    """(experiment id, run id) of the champion version, or None when there is none yet."""
    try:
        query = urllib.parse.urlencode({"name": registered_model, "alias": "champion"})
        run_id = _get_json(f"{url}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]["run_id"]
        run = _get_json(f"{url}/api/2.0/mlflow/runs/get?{urllib.parse.urlencode({'run_id': run_id})}")
        return run["run"]["info"]["experiment_id"], run_id
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
