"""Benchmark: the champion behind `mlflow models serve`: first answer after start, then latency per request size.

    .venv/bin/python benchmarks/bench_rest.py --workdir /tmp/small   # reuses bench_small.py's store

Starts ``mlflow models serve -m models:/rifml-immune-profile@champion --env-manager local``
(README, Spark and REST), times from the process start to the first ``/ping`` and to the
first answered ``/invocations`` (one panel), then posts 1, 100 and 10,000 panels
(``dataframe_split``, cells as text, as a lab system would send them) REPEATS times each
and prints the median latency of each size. Every answer is checked for one row per panel.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_score import BIN  # noqa: E402
from bench_small import MODEL, prepare  # noqa: E402

SIZES = (1, 100, 10_000)
START_SECONDS = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: bytes) -> list:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        # NaN (empty call fields of rejected rows) is valid for Python's json, not for strict parsers.
        return json.loads(response.read())["predictions"]


def payload(rows) -> bytes:
    return json.dumps({"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}).encode()


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="requests per size (median reported; 10,000 panels: a third)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here, reuse a store trained there")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="rifml-rest-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}")
    uri = prepare(work, max(SIZES))
    panels = pd.read_csv(work / "batch.csv", dtype=str, keep_default_na=False)
    bodies = {n: payload(panels.head(n)) for n in SIZES}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = (work / "serve.log").open("w")
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", MODEL, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        ping_s = None
        while time.perf_counter() - started < START_SECONDS:
            if server.poll() is not None:
                raise SystemExit(f"mlflow models serve exited with {server.returncode}; see {work / 'serve.log'}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        ping_s = time.perf_counter() - started
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        if ping_s is None:
            raise SystemExit(f"no /ping answer within {START_SECONDS} s")
        assert len(post(url, bodies[1])) == 1
        first_s = time.perf_counter() - started
        print(f"server start -> /ping {ping_s:.2f} s, -> first answered request (1 panel) {first_s:.2f} s")
        medians = {}
        for n in SIZES:
            times = []
            for _ in range(max(args.repeats // (3 if n >= 10_000 else 1), 1)):
                t = time.perf_counter()
                answer = post(url, bodies[n])
                times.append(time.perf_counter() - t)
                assert len(answer) == n, (len(answer), n)
            medians[n] = statistics.median(times)
            print(f"{n:>6,} panels per request: median {medians[n] * 1e3:8.1f} ms over {len(times)} requests "
                  f"({n / medians[n]:,.0f} panels/s)")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    load = os.getloadavg()
    print(f"| {dt.date.today()} | {ping_s:.2f} | {first_s:.2f} | " + " | ".join(f"{medians[n] * 1e3:.1f}" for n in SIZES)
          + f" | {args.repeats} | load {load[0]:.1f} |")


if __name__ == "__main__":
    main()
