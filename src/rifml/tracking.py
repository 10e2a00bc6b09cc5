"""Everything that talks to MLflow: the store, runs, the logged model, the registry.

Patient ids never reach MLflow: the input example is built from the catalog's
reference bands, and logged tables hold aggregates only.
"""

from __future__ import annotations

import os
import pickle
import re
import sqlite3
import sys
import tempfile
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np
import pandas as pd
import yaml

from rifml import __version__
from rifml.catalog import ENDOMETRIUM, Catalog
from rifml.config import load_train_config
from rifml.errors import RifmlInputError

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
}
CHAMPION = "champion"
# The logged model's artifact holding the pickled ImmuneProfiler (serving.RifmlModel loads it too).
PROFILER_ARTIFACT = "profiler"
SQLITE_PREFIX = "sqlite:///"


def registered_model_name(settings: dict | None = None) -> str:
    """The registry name: ``registered_model`` of the given training settings, else of configs/train.yaml.

    Read when asked (not at import), through the validated training config: a malformed
    train.yaml is then one clear error from the command that needs the name.
    """
    settings = settings if settings is not None else load_train_config(None)
    name = settings.get("registered_model")
    if not name:
        raise RifmlInputError("training settings name no registered_model")
    return str(name)


def champion_uri(name: str | None = None) -> str:
    """``models:/NAME@champion``; NAME defaults to :func:`registered_model_name`."""
    return f"models:/{name or registered_model_name()}@{CHAMPION}"


def version_uri(version: str, name: str | None = None) -> str:
    """``models:/NAME/VERSION``; NAME defaults to :func:`registered_model_name`."""
    return f"models:/{name or registered_model_name()}/{version}"


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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store (None for any other kind of store)."""
    if uri.startswith(SQLITE_PREFIX):
        return Path(uri[len(SQLITE_PREFIX) :].split("?", 1)[0])
    return None


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite store, as an absolute path (not relative to whoever created it)."""
    db = sqlite_path(uri)
    if db is not None:
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def require_store(uri: str, create: bool = False) -> None:
    """Refuse a SQLite store that does not exist: MLflow would create an empty one (a mistyped
    --tracking-uri then reads as "model not found"). Only ``train`` creates stores
    (``create=True``: the store's folder must exist)."""
    db = sqlite_path(uri)
    if db is not None and create:
        if not db.parent.is_dir():
            raise RifmlInputError(f"cannot create a store at {db} (tracking URI {uri}): folder {db.parent} does not exist")
        if db.exists() and not db.is_file():
            raise RifmlInputError(f"cannot use {db} as a store (tracking URI {uri}): it is not a file")
        return
    if db is not None and not db.is_file():
        raise RifmlInputError(
            f"no store at {db} (tracking URI {uri}): check --tracking-uri / MLFLOW_TRACKING_URI, "
            "or create the store with `rifml train`"
        )


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store (``<db>.lock``) for writes that race.

    MLflow creates the store's tables, an experiment and a registered model with
    check-then-insert steps; two ``rifml train`` at once on one store then fail ("table
    experiments already exists", "UNIQUE constraint failed"). One writer at a time avoids it.
    Other stores (a tracking server) serialize on their own.
    """
    import fcntl

    db = sqlite_path(uri)
    if db is None:
        yield
        return
    if not db.parent.is_dir():
        raise RifmlInputError(f"cannot create a store at {db}: folder {db.parent} does not exist")
    with open(db.parent / f"{db.name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_experiment_name(name: str) -> str:
    """An experiment name that stays one folder under the artifact root, kept exactly as given.

    Raises
    ------
    RifmlInputError
        For an empty name, a path separator, a ``..`` component or a control character.
    """
    if not name.strip():
        raise RifmlInputError("--experiment: the name is empty")
    if "/" in name or "\\" in name or ".." in name or name.strip() == ".":
        raise RifmlInputError(f"--experiment {name!r}: no '/', '\\' or '..' in experiment names (they become folders)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise RifmlInputError(f"--experiment {name!r}: control characters are not allowed")
    return name


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
    # Percent-encoded: a bare "#" or "?" in a file URI would start a fragment or query and cut the
    # folder name ("trial #2" -> "trial "); MLflow decodes the URI back to the plain name on disk.
    location = f"{root}/{quote(check_experiment_name(name), safe='')}" if root else None
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
        row[ctx.name] = "lab_example" if ctx.name == catalog.lab_column else ""
    blood_only = dict(row, **{catalog.id_column: "EXAMPLE-2"})
    for marker in catalog.compartment_markers(ENDOMETRIUM):
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
    registered_model: str | None = None,
) -> LoggedModel:
    """One run: params, metrics, plots and tables, the model (registered as ``registered_model``, default
    :func:`registered_model_name`; champion if floors met)."""
    registered_model = registered_model or registered_model_name()
    # The whole logging step holds the store's lock: creating the store, the experiment, the
    # registered model and the alias all race between concurrent runs; logging takes seconds.
    with store_lock(uri):
        return _log_training(profiler, experiment=experiment, uri=uri, params=params, metrics=metrics,
                             figures=figures, tables=tables, floors_met=floors_met, tags=tags,
                             registered_model=registered_model)


def _log_training(profiler, *, experiment, uri, params, metrics, figures, tables, floors_met, tags,
                  registered_model) -> LoggedModel:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from mlflow.types.schema import ParamSchema, ParamSpec

    from rifml.serving import LAB_OFFSETS_PARAM, score_frame

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


def load_profiler(model_uri: str, tracking_uri: str | None = None):
    """The fitted ImmuneProfiler inside a logged rifml model, plus the model's metadata.

    A registered model in a SQLite store whose artifacts are local files, or a model given
    as a folder, is read straight from its files (:func:`local_model_folder`): importing
    MLflow and its store would take longer than scoring a daily batch. It is the same
    pickled profiler that MLflow's pyfunc loader unpickles for REST and Spark. Anything
    else (another kind of store, an unknown model or alias) goes through MLflow, which
    also words the errors.

    Parameters
    ----------
    model_uri : str
        ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a model folder, or any MLflow model URI.
    tracking_uri : str, optional
        The store. Default: the one MLflow is connected to when a caller imported and
        connected it (:func:`connect`), else :func:`resolve_tracking_uri`.
    """
    if tracking_uri is None and "mlflow" in sys.modules:
        uri = sys.modules["mlflow"].get_tracking_uri()
    else:
        uri = resolve_tracking_uri(tracking_uri)
    folder = local_model_folder(model_uri, uri)
    loaded = _read_model_folder(folder) if folder is not None else None
    return loaded if loaded is not None else _load_with_mlflow(model_uri, uri)


# models:/NAME@ALIAS or models:/NAME/VERSION (a registered model); other forms are left to MLflow.
_REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?")
# MLflow's registry tables (SQLAlchemy store, mlflow 3.17): one query from an alias or version to its files.
_VERSION_QUERY = (
    "SELECT v.storage_location FROM model_versions v {join} WHERE v.name = ? AND {where}"
)


def local_model_folder(model_uri: str, tracking_uri: str) -> Path | None:
    """The local folder holding a model's files, found without MLflow; None when it cannot be told here.

    A registered model in a SQLite store is resolved with one read-only query of the
    registry (the alias or version, to the version's storage location); a ``file:`` URI or
    a path is the folder itself. A missing alias, several matching rows (workspaces), a
    remote artifact store or an unreadable store all give None.
    """
    match = _REGISTERED.fullmatch(model_uri)
    if match is None:
        if "://" in model_uri and not model_uri.startswith("file://") or model_uri.startswith(("models:", "runs:")):
            return None
        folder = _file_path(model_uri)
        return folder if (folder / "MLmodel").is_file() else None
    db = sqlite_path(tracking_uri)
    if db is None or not db.is_file():
        return None
    if match["alias"] is not None:
        query = _VERSION_QUERY.format(
            join="JOIN registered_model_aliases a ON a.name = v.name AND a.version = v.version AND a.workspace = v.workspace",
            where="a.alias = ?",
        )
        key = match["alias"]
    else:
        query, key = _VERSION_QUERY.format(join="", where="v.version = ?"), int(match["version"])
    try:
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as store:
            found = store.execute(query, (match["name"], key)).fetchall()
    except sqlite3.Error:
        return None
    if len(found) != 1 or not found[0][0] or not str(found[0][0]).startswith("file:"):
        return None
    folder = _file_path(found[0][0])
    return folder if (folder / "MLmodel").is_file() else None


def _file_path(location: str) -> Path:
    from urllib.parse import unquote, urlparse

    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    return Path(location)


def _read_model_folder(folder: Path):
    """(profiler, metadata) from a logged rifml model's files; None for a model that is not laid out as rifml logs it."""
    try:
        spec = yaml.load((folder / "MLmodel").read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        artifact = spec["flavors"]["python_function"]["artifacts"][PROFILER_ARTIFACT]["path"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    path = folder / artifact
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        profiler = pickle.load(handle)
    if not hasattr(profiler, "call"):
        return None
    return profiler, dict(spec.get("metadata") or {})


def _load_with_mlflow(model_uri: str, tracking_uri: str):
    import mlflow

    connect(tracking_uri)
    try:
        # suppress_warnings skips MLflow's requirements check, which scans every installed
        # distribution (~0.6 s per load); scikit-learn still warns when it unpickles an
        # estimator saved under another version.
        model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    except Exception as exc:  # MLflow raises several types for an unknown model or alias
        raise RifmlInputError(
            _missing_alias_message(model_uri)
            or f"cannot load model {model_uri} from {mlflow.get_tracking_uri()}: {str(exc).splitlines()[0]}"
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


def _missing_alias_message(model_uri: str) -> str | None:
    """For ``models:/NAME@ALIAS`` whose alias is unset: what is registered, and the --model to use."""
    import mlflow
    from mlflow import MlflowClient

    match = re.fullmatch(r"models:/([^/@]+)@([^/]+)/?", model_uri)
    if not match:
        return None
    name, alias = match.groups()
    store = mlflow.get_tracking_uri()
    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except Exception:  # noqa: BLE001 - the store cannot tell; the caller's generic message stands
        return None
    if not versions:
        return f"no model registered as {name} in {store}: train one with `rifml train`, or pass --model"
    if any(alias in (v.aliases or []) for v in versions):
        return None  # the alias exists: the failure is something else
    latest = max(versions, key=lambda v: int(v.version))
    return (
        f"no version of {name} has the alias {alias} in {store} (latest registered: version {latest.version});"
        f" pass --model models:/{name}/{latest.version}, or retrain"
    )
