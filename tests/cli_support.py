"""Running the console script from tests, and checking its one-line refusals."""

import os
import subprocess
import sys
from pathlib import Path

RIFML = str(Path(sys.executable).parent / "rifml")


def rifml(*args, cwd, wait=True):
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [RIFML, *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=environment)


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
