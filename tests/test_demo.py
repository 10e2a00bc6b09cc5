"""`rifml demo` (what `make demo` runs) end to end on the smallest cohort it takes (two full trainings)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

RIFML = str(Path(sys.executable).parent / "rifml")


def test_demo_leaves_every_promised_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([RIFML, "demo", "--workdir", "d", "--n", "200"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    work = tmp_path / "d"
    for name in ["cohort.csv", "batch.csv", "calls.csv", "rejects.csv", "mlflow.db", "report/index.html", "outcomes/index.html", "outcomes/effects.csv"]:
        assert (work / name).exists(), name
    calls = pd.read_csv(work / "calls.csv")
    rejects = pd.read_csv(work / "rejects.csv")
    assert len(calls) + len(rejects) == len(pd.read_csv(work / "batch.csv", dtype=str))
    assert len(list((work / "report" / "patients").glob("*.html"))) == len(calls)
    assert "rifml ui --tracking-uri" in result.stdout
