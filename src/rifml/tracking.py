"""Everything that talks to MLflow: the store, runs, the logged model, the registry.

Patient ids never reach MLflow: the input example is built from the catalog's
reference bands, and logged tables hold aggregates only.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rifml import __version__
from rifml.catalog import Catalog
from rifml.errors import RifmlInputError

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
}
REGISTERED_MODEL = "rifml-immune-profile"
CHAMPION = "champion"


def quiet_mlflow() -> None:
    """Offline-friendly, quiet MLflow (no telemetry, no "View run" lines on stdout)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (absolute)."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite store, as an absolute path (not relative to whoever created it)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def connect(uri: str | None) -> str:
    import mlflow

    quiet_mlflow()
    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved


def ensure_experiment(name: str, uri: str) -> str:
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    root = _artifact_root(uri)
    location = f"{root}/{name}" if root else None
    return mlflow.create_experiment(name, artifact_location=location)


def example_panel(catalog: Catalog) -> pd.DataFrame:
    """Two synthetic rows (mid-band values, fake ids) for the model's input example."""
    row: dict[str, str] = {catalog.id_column: "EXAMPLE-1"}
    for marker in catalog.markers:
        if marker.is_numeric:
            low, high = marker.reference_band
            row[marker.name] = f"{np.sqrt(max(low, 0.1) * high):.3g}"
        else:
            row[marker.name] = next(iter(marker.categories))
    for ctx in catalog.context:
        row[ctx.name] = "lab_example" if ctx.name == "lab_id" else ""
    blood_only = dict(row, **{catalog.id_column: "EXAMPLE-2"})
    for marker in catalog.compartment_markers("endometrium"):
        blood_only[marker.name] = ""
    return pd.DataFrame([row, blood_only], dtype=object)


def input_schema(catalog: Catalog):
    """Every catalog column as optional text (cells may be numbers, empties or "<x"), id required,
    plus the optional file-level flags that batch engines pass (serving.BATCH_FLAGS)."""
    from mlflow.types import ColSpec, Schema

    from rifml.serving import BATCH_FLAGS

    columns = [ColSpec("string", catalog.id_column)]
    columns += [ColSpec("string", name, required=False) for name in catalog.known_columns if name != catalog.id_column]
    columns += [ColSpec("boolean", name, required=False) for name in BATCH_FLAGS]
    return Schema(columns)


@dataclass
class LoggedModel:
    run_id: str
    model_uri: str
    version: str
    champion: bool
    experiment_id: str


def log_training(
    profiler,
    *,
    experiment: str,
    uri: str,
    params: dict,
    metrics: dict[str, float],
    figures: dict[str, object],
    tables: dict[str, pd.DataFrame],
    floors_met: bool,
    tags: dict[str, str],
    registered_model: str = REGISTERED_MODEL,
) -> LoggedModel:
    """One run: params, metrics, plots and tables, the model (registered; champion if floors met)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from mlflow.types.schema import ParamSchema, ParamSpec

    from rifml.serving import LAB_OFFSETS_PARAM, PROFILER_ARTIFACT, score_frame

    experiment_id = ensure_experiment(experiment, uri)
    catalog = profiler.catalog_
    with mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags(tags)
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        for name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{name}.png")
        for name, table in tables.items():
            path = Path(tmp) / f"{name}.csv"
            table.to_csv(path)
            mlflow.log_artifact(str(path), artifact_path="tables")
        profiler_path = Path(tmp) / "profiler.pkl"
        with profiler_path.open("wb") as handle:
            pickle.dump(profiler, handle, protocol=pickle.HIGHEST_PROTOCOL)
        example = example_panel(catalog)
        signature = infer_signature(example, score_frame(profiler, example))
        signature.inputs = input_schema(catalog)
        signature.params = ParamSchema([ParamSpec(LAB_OFFSETS_PARAM, "string", "")])
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("mlflow_entry.py")),
            artifacts={PROFILER_ARTIFACT: str(profiler_path)},
            signature=signature,
            input_example=example,
            pip_requirements=[f"rifml=={__version__}"],
            metadata={"catalog_version": catalog.catalog_version, "rifml_version": __version__},
        )
        version = mlflow.register_model(info.model_uri, registered_model)
    client = MlflowClient()
    if floors_met:
        client.set_registered_model_alias(registered_model, CHAMPION, version.version)
    return LoggedModel(run.info.run_id, info.model_uri, str(version.version), floors_met, experiment_id)


def load_profiler(model_uri: str):
    """The fitted ImmuneProfiler inside a logged rifml model, plus the model's metadata."""
    import mlflow

    try:
        # suppress_warnings skips MLflow's requirements check, which scans every installed
        # distribution (~0.6 s per load); scikit-learn still warns when it unpickles an
        # estimator saved under another version.
        model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    except Exception as exc:  # MLflow raises several types for an unknown model or alias
        raise RifmlInputError(
            f"cannot load model {model_uri} from {mlflow.get_tracking_uri()}: {str(exc).splitlines()[0]}"
            " (train one with `rifml train`, or pass --model / --tracking-uri)"
        ) from exc
    python_model = model.unwrap_python_model()
    if not hasattr(python_model, "profiler"):
        raise RifmlInputError(f"{model_uri} is not a rifml model")
    return python_model.profiler, dict(model.metadata.metadata or {})


def log_outcomes(
    *, experiment: str, uri: str, params: dict, metrics: dict[str, float], tables: dict[str, pd.DataFrame],
    plots: list[Path], page: str | None = None,
) -> str:
    """One run of an outcomes analysis: params, metrics, aggregate tables, plots (PNG files), the HTML page;
    returns the run id. The caller passes aggregates only (per-group counts and estimates): no patient ids.
    """
    import mlflow

    experiment_id = ensure_experiment(experiment, uri)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        for name, table in tables.items():
            mlflow.log_text(table.to_csv(index=False), f"tables/{name}.csv")
        for path in plots:
            mlflow.log_artifact(str(path), artifact_path="plots")
        if page is not None:
            mlflow.log_text(page, "index.html")
    return run.info.run_id
