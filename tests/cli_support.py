"""Running the console script from tests, and checking its one-line refusals."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RIFML = str(Path(sys.executable).parent / "rifml")
STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def rifml(*args, cwd, wait=True):
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [RIFML, *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=environment)


@dataclass(frozen=True)
class Finished:
    """What `rifml_in_process` saw, named like subprocess.CompletedProcess so the same checks read it."""

    returncode: int
    stdout: str
    stderr: str


def rifml_in_process(*args, cwd) -> Finished:
    """The same command line run by `rifml.cli.app` in this process, from ``cwd`` and without MLFLOW_TRACKING_URI.

    A `rifml` process spends ~3 s importing before it reads its first argument; a refusal checked here costs
    milliseconds. What only the process shows (the entry point's exit status, signals, start-up) stays with `rifml`.
    """
    from typer.testing import CliRunner

    from rifml.cli import app

    here = os.getcwd()
    # mlflow.set_tracking_uri writes the environment: one command's store must not become the next one's default
    saved = {name: os.environ.pop(name, None) for name in STORE_VARIABLES}
    os.chdir(cwd)
    try:
        # catch_exceptions=False: a bug escaping the command's own error handling fails the test with its traceback
        result = CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)
    finally:
        os.chdir(here)
        if "mlflow" in sys.modules:  # the command pointed MLflow's process-wide URIs at its store: point them back
            import mlflow

            mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
            mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Finished(result.exit_code, result.stdout, result.stderr)


def refused(result, *phrases):
    """Exit 2 with one error line on stderr (after any progress lines) that holds every phrase, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    errors = [line for line in lines if line.startswith("rifml: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("rifml: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in errors[0], (phrase, errors[0])
    return errors[0]
