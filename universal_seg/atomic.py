"""Crash-safe file writes: a temporary file in the target's directory, flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows), then the directory fsync'ed. A reader (or a run resumed after
``kill -9`` or a power cut) sees the old file or the new one, never a truncated one.

The file gets the mode an ordinary ``open(path, "w")`` would give it (0666 less the umask; 0644 with the usual umask),
not ``mkstemp``'s 0600. :func:`check_output_file` checks a tool's output path before the work that fills it.
"""

import contextlib
import os
import tempfile

TEMP_PREFIX = ".tmp-"  # temporary files start with this (a kill can leave one behind; it is never read)


def _umask() -> int:
    """The process's umask, read without changing it where Linux reports it (os.umask would, briefly, for every
    thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, durable: bool = True):
    """``with atomic_path(path) as tmp: library_that_writes(tmp)``: for writers that take a file name. ``tmp`` is a
    fresh name in ``path``'s directory with its extension; it replaces ``path`` when the block finishes without an
    exception, and is removed otherwise (``path`` untouched). ``durable=False`` skips the directory fsync (see
    :func:`atomic_open`)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        _fsync_dir(directory)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", durable: bool = True):
    """``with atomic_open(path, "wb") as f: f.write(...)``: ``path`` is replaced only when the block finishes
    without an exception (the data flushed and fsync'ed first); otherwise the temporary file is removed and
    ``path`` is untouched.

    ``durable=False`` skips both fsyncs: for the many small per-image files of a prediction run, where two fsyncs
    per file would cost more than writing it. A killed process still leaves the old file or the whole new one
    (the data is in the page cache); only an OS crash or power cut can leave the renamed file empty, which is why
    such files are checked for content before a restart trusts them (PredictionWriter.done)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}.")
    with atomic_path(path, durable) as tmp, open(tmp, mode) as f:
        yield f
        if durable:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (see module docstring)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (see module docstring)."""
    with atomic_open(path, "w") as f:
        f.write(text)


class OutputPathError(ValueError):
    """An output file that cannot be written (a folder, a path under a file, an unwritable folder)."""


def check_output_file(path, option="--output", example="out.json"):
    """Checks, before any work, that the file ``path`` can be written: creates its folder when missing (as the
    atomic write would) and writes (then removes) a probe file there. OutputPathError, one sentence naming ``option``
    and the fix, when ``path`` is a folder, lies under a file, or its folder cannot be written."""
    if os.path.isdir(path):
        raise OutputPathError(
            f"{option} '{path}' is a folder; give a file name, e.g. {option} {os.path.join(path, example)}."
        )
    folder = os.path.dirname(os.path.abspath(path))
    ancestor = folder
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise OutputPathError(f"{option} '{path}' lies under '{ancestor}', which is not a folder; choose another path.")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=TEMP_PREFIX):
            pass
    except OSError as err:
        raise OutputPathError(
            f"{option} '{path}' cannot be written: folder '{folder}' is not writable ({err.strerror or err}); choose "
            "a writable folder."
        ) from err
