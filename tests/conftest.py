"""Shared fixtures. Quiet, offline MLflow settings apply to every test process."""

import fcntl
import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist already runs one test per core: one level of parallelism, so BLAS, LightGBM (OpenMP) and the
    # numba kernels stay single-threaded here and in the rifml processes the tests start.
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

from rifml.catalog import load_catalog  # noqa: E402


@pytest.fixture(scope="session")
def catalog():
    return load_catalog()


@pytest.fixture(autouse=True)
def _isolated_mlflow_uris():
    """mlflow.set_tracking_uri/set_registry_uri also write os.environ; keep one test's store out of the next."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory):
    """One quick training run per test session, shared read-only; `copy_store` it to write into it.

    Under pytest-xdist the workers share one template (the first to need it trains it, under a file
    lock), so the whole suite pays for one training instead of one per module.
    """
    from mlflow_support import TrainedStore, train_shared_store

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp()
    root = root.parent if worker else root  # xdist: the run's folder, above each worker's own
    folder = root / "shared-store"
    with (root / "shared-store.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder / "run_id"
        if done.exists():
            return TrainedStore(folder, run_id=done.read_text())
        folder.mkdir(exist_ok=True)
        store = train_shared_store(folder)
        done.write_text(store.run_id)
        return store


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own, which would answer first
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (make test) hands out the longest files first: see tests/scheduling.py."""
    if config.getoption("dist") != "loadfile":
        return None
    from scheduling import LongestFileFirst

    return LongestFileFirst(config, log)
