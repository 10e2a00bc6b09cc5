"""Do the subtypes depend on the training size? Issue 10 item 6.

Trains rifml (with labels; subtype discovery never uses them) on batches of several sizes
from one scenario, calls one common scoring batch with each model, and prints per size the
subtypes found, and between sizes the adjusted Rand index of the common batch's subtype
calls (and each size's ARI against the simulator's latent subtypes).

    .venv/bin/python benchmarks/size_stability.py [--sizes 2000,20000,100000] [--scenario NAME]
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import itertools  # noqa: E402
import time  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import pandas as pd  # noqa: E402
import typer  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from rifml.catalog import load_catalog  # noqa: E402
from rifml.robustness import clean_batch  # noqa: E402
from rifml.simulate import load_simulation_config  # noqa: E402
from rifml.training import load_train_config, profiler_from_config  # noqa: E402


def main(
    sizes: Annotated[str, typer.Option("--sizes", help="Comma-separated training sizes.")] = "2000,20000,100000",
    scenario: Annotated[Optional[str], typer.Option("--scenario", help="Scenario name or file (default: simulate.yaml).")] = None,
    n_test: Annotated[int, typer.Option("--n-test", min=100)] = 5000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first training batch; each size gets its own.")] = 3,
) -> None:
    """Train on each size, call one common batch, compare the subtype calls."""
    catalog = load_catalog()
    config = load_simulation_config(scenario=scenario)
    label = catalog.label_column
    test, truth, _, _ = clean_batch(catalog, config, n_test, 99, "score", 0.0)
    complete = (truth["panel"] == "complete").to_numpy()
    calls, rows = {}, []
    for i, n in enumerate(int(s) for s in sizes.split(",")):
        train, _, _, _ = clean_batch(catalog, config, n, seed + i, "train", 0.0)
        started = time.perf_counter()
        profiler = profiler_from_config(load_train_config(None)).fit(train, train[label])
        seconds = time.perf_counter() - started
        calls[n] = profiler.call(test.drop(columns=label))["subtype"].to_numpy()[complete]
        rows.append({"panels": n, "k": len(profiler.subtype_table_), "fit_s": round(seconds, 1),
                     "ari_vs_latent": round(adjusted_rand_score(truth["subtype"].to_numpy()[complete], calls[n]), 3),
                     "subtypes": ", ".join(sorted(profiler.subtype_table_["subtype"]))})
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))
    pairs = [{"sizes": f"{a:,} vs {b:,}", "ari": round(adjusted_rand_score(calls[a], calls[b]), 3)}
             for a, b in itertools.combinations(calls, 2)]
    print(pd.DataFrame(pairs).to_string(index=False))


if __name__ == "__main__":
    typer.run(main)
