"""Where a command may write: outputs never land on inputs, on each other, or in folders that hold inputs.

Every writing command checks its paths here before any slow work, so a mistake costs one
line and exit 2, never a destroyed file. Temporary files carry the writing process's id in
their name, so a later run can tell the leftovers of a killed run from a live one's files.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rifml.errors import RifmlInputError

PART_SUFFIX = ".part"
# When this process started (seconds since the epoch): a leftover is only ever older than its run.
RUN_STARTED = time.time()


@dataclass(frozen=True)
class Role:
    """One path a command was given, with the option that named it (for the error line)."""

    option: str
    path: Path
    folder: bool = False  # an output that is a whole folder, replaced on success (report)


def _resolved(path: Path) -> Path:
    # realpath follows symlinks even when the target does not exist yet, so a dangling link
    # to an input's name still resolves to that name.
    return Path(os.path.realpath(os.path.expanduser(path)))


def _same_file(a: Path, b: Path) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts: same inode under two names
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        _resolved(path).relative_to(_resolved(folder))
    except ValueError:
        return False
    return True


def _describe(role: Role) -> str:
    return f"{role.option} {role.path}"


def check_paths(inputs: list[Role], outputs: list[Role]) -> None:
    """Refuse outputs that would overwrite an input, each other, or a folder holding an input.

    Parameters
    ----------
    inputs : list of Role
        Every file the command reads (panels, calls, catalog, configs, the SQLite store);
        roles whose path is None are ignored by the caller.
    outputs : list of Role
        Every file or folder the command writes.

    Raises
    ------
    RifmlInputError
        For the first clash, naming both options; for an output whose folder is missing,
        not a folder, or not writable; for a file output that names an existing folder.
    """
    for i, out in enumerate(outputs):
        for inp in inputs:
            if _same_file(out.path, inp.path):
                raise RifmlInputError(
                    f"{_describe(out)} is the same file as {_describe(inp)}: writing it would destroy the input;"
                    " choose another name"
                )
            if out.folder and _inside(inp.path, out.path):
                raise RifmlInputError(
                    f"{_describe(out)} holds {_describe(inp)} and would be replaced whole: choose a new folder for it"
                )
        for other in outputs[:i]:
            if _same_file(out.path, other.path) or (out.folder and _inside(other.path, out.path)) or (
                other.folder and _inside(out.path, other.path)
            ):
                raise RifmlInputError(
                    f"{_describe(out)} and {_describe(other)} name the same place: each output needs its own name"
                )
        check_writable(out)


def _folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def check_writable(role: Role) -> None:
    """The output's folder exists and takes a new file, and a file output is not a folder."""
    path = role.path
    if not role.folder and path.is_dir():
        raise RifmlInputError(f"{_describe(role)} is a folder: give a file name (for example {path / 'calls.csv'})")
    if role.folder and path.exists() and not path.is_dir():
        raise RifmlInputError(f"{_describe(role)} is a file: give a folder name for the report")
    folder = _folder_of(path)
    if not folder.is_dir():
        raise RifmlInputError(
            f"{_describe(role)}: folder {folder} "
            + ("is a file, not a folder" if folder.exists() else "does not exist")
        )
    try:  # os.access is blind to read-only mounts and answers yes for root: try the real thing
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(path), suffix=PART_SUFFIX, dir=folder)
    except OSError as exc:
        raise RifmlInputError(f"{_describe(role)}: cannot write in folder {folder} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)


def temp_prefix(path: Path) -> str:
    """Hidden name prefix of this process's temporary files for ``path`` (beside it)."""
    return f".{Path(path).name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_parts(path: Path, started: float = RUN_STARTED) -> list[Path]:
    """Remove temporary files and folders that killed runs left for the output ``path``.

    A leftover is named ``.<name>.<pid>.<random>.part`` (or ``.<name>.old-<pid>``, a report
    being swapped out). It is removed only when it is older than this run and its process is
    gone, so a run writing the same name at this moment keeps its files.

    Returns
    -------
    list of Path
        What was removed.
    """
    import shutil

    path = Path(path)
    folder = _folder_of(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)\.[^/]*" + re.escape(PART_SUFFIX) + r"|old-(\d+))$")
    removed = []
    try:
        candidates = list(folder.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.match(candidate.name)
        if not match:
            continue
        pid = int(match.group(1) or match.group(2))
        try:
            older = candidate.lstat().st_mtime < started
        except OSError:
            continue
        if not older or (pid != os.getpid() and _pid_alive(pid)):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def prepare_outputs(inputs: list[tuple[str, Path | None]], outputs: list[tuple[str, Path | None]],
                    folders: tuple[str, ...] = ()) -> None:
    """check_paths on the (option, path) pairs given (None = not given), then sweep each output's leftovers.

    ``folders`` names the output options that are whole folders (a report).
    """
    in_roles = [Role(option, Path(path)) for option, path in inputs if path is not None]
    out_roles = [Role(option, Path(path), option in folders) for option, path in outputs if path is not None]
    check_paths(in_roles, out_roles)
    for role in out_roles:
        sweep_stale_parts(role.path)
