"""The one exception type users see: a message that names the bad value and what is allowed."""


class PipelineError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""


class ConfigError(PipelineError):
    """A setting from the environment or the command line is invalid."""


class ServiceUnavailable(PipelineError):
    """PostgreSQL or Redis cannot be reached; the message says which URL and how to fix it."""


class InputError(PipelineError):
    """An input file or value is invalid; nothing has been written."""


class LakeBusy(PipelineError):
    """Another export holds the lake's lock."""


class SnapshotDamaged(PipelineError):
    """A snapshot's manifest, state or a file does not verify; the message says which and what to do."""


class FileDamaged(SnapshotDamaged):
    """A data file of a snapshot is not the one committed (missing, truncated, rewritten, rotted). Its rows
    are still in PostgreSQL: an export rebuilds the snapshot from there. `path` and `problem` say which
    file and what is wrong with it."""

    path: str = ""
    problem: str = ""


class DiskFull(PipelineError):
    """The disk under the lake or the results filled up; nothing was published."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from the OS, or the same wrapped by Arrow or Polars (which may drop errno)."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def disk_full(path: object, needed_bytes: int | None, setting: str) -> DiskFull:
    """One line naming the full disk's path, what is free, what was needed and what to do."""
    import shutil
    from pathlib import Path

    where = Path(str(path))
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = f", about {needed_bytes / 2**20:,.1f} MiB needed" if needed_bytes else ""
    return DiskFull(f"no space left on the disk holding {where}: {free / 2**20:,.1f} MiB free{need}; "
                    f"nothing was published; free some space or point {setting} at a larger disk")


class UnsupportedFormat(PipelineError):
    """A file carries a format version this build does not read (pipeline.core.formats); nothing was read from it."""


class PipelineWarning(UserWarning):
    """Something the pipeline stepped around and repaired (a damaged grid, rebuilt): one line; the work goes on."""
