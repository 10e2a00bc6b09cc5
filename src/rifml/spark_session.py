"""How rifml finds or starts its Spark session, and how it keeps a local JVM's start cheap.

A session rifml starts itself (``local[*]``, or the master named with ``MASTER`` /
``--master`` in ``PYSPARK_SUBMIT_ARGS``) gets :data:`LOCAL_SETTINGS` for every key the
user did not set elsewhere. A local JVM also maps a **class-data-sharing archive** of the
classes Spark loads (JDK 13+ dynamic archive): the first local run writes it at the JVM's
exit into rifml's cache folder, later runs map it instead of loading and verifying each
class again. That halved the JVM's start (session plus a first job: 19.2 -> 9.3 java
CPU-s, measured back to back on the same machine). ``RIFML_SPARK_CLASS_ARCHIVE=off``
turns it off; a folder there moves it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

LOCAL_SETTINGS = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.log.level": "ERROR",
    # The JVM only splits lines and moves Arrow batches: the quick compiler alone starts it in about
    # half the time and CPU (1M panels: 60-65 CPU-s in all instead of 76).
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
}
JAVA_OPTIONS = "spark.driver.extraJavaOptions"
ARCHIVE_SETTING = "RIFML_SPARK_CLASS_ARCHIVE"
# The JVM logs each class it cannot archive (signed jars, old class files) as a warning on stdout.
QUIET_ARCHIVE_LOG = "-Xlog:cds*=off"
# An archive a JVM was still writing (or was killed writing) crashes the JVM that maps it, so a
# written archive is checked by a JVM of its own before it takes the archive's name; parts older
# than this that fail the check are given up.
PART_GIVEN_UP_SECONDS = 3600


def user_settings() -> set[str]:
    """Spark settings made outside rifml (``--conf`` in ``PYSPARK_SUBMIT_ARGS``, spark-defaults.conf): they win
    over :data:`LOCAL_SETTINGS`, whose values the session builder would otherwise impose."""
    submit_args = os.environ.get("PYSPARK_SUBMIT_ARGS", "")
    found = set(re.findall(r"--conf[= ]\s*[\"']?(spark\.[\w.]+)=", submit_args))
    if "--driver-java-options" in submit_args:
        found.add(JAVA_OPTIONS)
    conf_dir = os.environ.get("SPARK_CONF_DIR") or (
        os.path.join(os.environ["SPARK_HOME"], "conf") if os.environ.get("SPARK_HOME") else None)
    defaults = Path(conf_dir, "spark-defaults.conf") if conf_dir else None
    if defaults is not None and defaults.is_file():
        for line in defaults.read_text(errors="replace").splitlines():
            key = line.split(None, 1)[0] if line.strip() and not line.lstrip().startswith("#") else ""
            if key.startswith("spark."):
                found.add(key.split("=", 1)[0])
    return found


def configured_master() -> str | None:
    """The Spark master chosen outside rifml: ``MASTER`` or ``--master`` in ``PYSPARK_SUBMIT_ARGS``."""
    if os.environ.get("MASTER"):
        return os.environ["MASTER"]
    found = re.search(r"--master[= ]\s*(\S+)", os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    return found.group(1) if found else None


def java_binary() -> Path | None:
    """The java binary PySpark will start (``JAVA_HOME``, else ``java`` on PATH), resolved."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home, "bin", "java") if home else (Path(shutil.which("java")) if shutil.which("java") else None)
    return found.resolve() if found is not None and found.is_file() else None


def class_archive() -> Path | None:
    """Where this Java and this PySpark keep their class archive; None when turned off or there is no java.

    Another Java or PySpark (a new version, or another installation) gets an archive of its own.
    """
    setting = os.environ.get(ARCHIVE_SETTING, "")
    java = java_binary()
    if setting.lower() in {"0", "off", "false", "no"} or java is None:
        return None
    import pyspark

    folder = Path(setting) if setting else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rifml"
    stamp = f"{pyspark.__version__}|{java}|{java.stat().st_mtime_ns}|{Path(pyspark.__file__).parent}"
    return folder / f"spark-{pyspark.__version__}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}.jsa"


def _sound(archive: Path, java: Path) -> bool:
    """Whether a JVM starts with ``archive`` mapped (a partly written one makes it crash)."""
    # a crash here is the expected answer for a cut archive: no crash report or core file left behind
    checked = subprocess.run([str(java), "-XX:-CreateCoredumpOnCrash", f"-XX:ErrorFile={os.devnull}", QUIET_ARCHIVE_LOG,
                              f"-XX:SharedArchiveFile={archive}", "-version"], capture_output=True, timeout=120)
    return checked.returncode == 0


def archive_options(archive: Path) -> str:
    """JVM options that map ``archive`` when it is there, else write it (to a part of this process) at the JVM's exit.

    Finished parts of earlier runs are checked and promoted to ``archive`` here (atomically, so
    two runs never see half an archive); parts that fail the check for an hour are removed.
    """
    java = java_binary()
    if not archive.is_file() and java is not None:
        for part in sorted(archive.parent.glob(f"{archive.name}.*.part"), key=lambda p: -p.stat().st_mtime):
            if not archive.is_file() and _sound(part, java):
                os.replace(part, archive)
            elif time.time() - part.stat().st_mtime > PART_GIVEN_UP_SECONDS:
                part.unlink(missing_ok=True)
    if archive.is_file():
        return f"{QUIET_ARCHIVE_LOG} -XX:SharedArchiveFile={archive}"
    archive.parent.mkdir(parents=True, exist_ok=True)
    return f"{QUIET_ARCHIVE_LOG} -XX:ArchiveClassesAtExit={archive}.{os.getpid()}.part"


def local_settings(user: set[str]) -> dict[str, str]:
    """:data:`LOCAL_SETTINGS` without the keys in ``user``; the JVM options with the class archive's."""
    settings = {key: value for key, value in LOCAL_SETTINGS.items() if key not in user}
    archive = class_archive() if JAVA_OPTIONS in settings else None
    if archive is not None and " " not in str(archive):  # Spark splits the options at spaces
        try:
            settings[JAVA_OPTIONS] += " " + archive_options(archive)
        except (OSError, subprocess.SubprocessError):  # an unwritable cache: start as before, without it
            pass
    return settings


def spark_session():
    """The active (or default) Spark session, else a new one: ``local[*]`` bound to loopback unless a master is configured.

    Returns
    -------
    pyspark.sql.SparkSession
    """
    from pyspark.sql import SparkSession

    active = existing_session()
    if active is not None:
        return active
    builder = SparkSession.builder.appName("rifml-score")
    master = configured_master()
    if master is None or master.startswith("local"):
        # Executors are Python workers on this machine: same interpreter, loopback only.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or "local[*]")
        for key, value in local_settings(user_settings()).items():
            builder = builder.config(key, value)
    return builder.getOrCreate()


def existing_session():
    """The active (or default) session of this process, or None."""
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    try:
        return SparkSession.active()  # the default session too: a thread of ours has no active one of its own
    except PySparkRuntimeError:
        return None
