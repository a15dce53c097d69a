"""Files on local disks, NFS, s3:// or gs://: paths, reads, and the one atomic writer. Torch-free.

Local writes go to a temporary file in the same folder, are fsynced, then renamed over the target,
so a kill leaves the old file or the new one, never half of one. URIs go through pyarrow's
filesystems (object stores publish a written object whole or not at all).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(root: str | os.PathLike, *parts: str) -> str:
    """Path join that keeps URIs (s3://bucket/x) intact; local paths come back absolute."""
    if is_uri(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root, *parts).absolute())


def _filesystem(uri: str):
    import pyarrow.fs as pafs  # only URIs need it

    return pafs, *pafs.FileSystem.from_uri(uri)


def read_bytes(path: str | os.PathLike) -> bytes | None:
    """A file's bytes, or None when there is no file there."""
    if is_uri(path):
        pafs, fs, inner = _filesystem(str(path))
        if fs.get_file_info(inner).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(inner) as f:
            return f.read()
    return Path(path).read_bytes() if Path(path).is_file() else None


def read_text(path: str | os.PathLike) -> str | None:
    data = read_bytes(path)
    return None if data is None else data.decode()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> str:
    """Write `data` (text is UTF-8) to `path`, creating parent folders; return the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if is_uri(path):
        _, fs, inner = _filesystem(str(path))
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)  # a no-op on object stores
        with fs.open_output_stream(inner) as f:
            f.write(payload)
        return str(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are mode 0600. Created with 0666, the kernel applies the umask (and a folder's
    # default ACL), so results and reports are as readable as any file the user makes, e.g. on shared NFS.
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(target)


def is_nonempty_folder(path: str | os.PathLike) -> bool:
    """A local folder with something in it (URIs: never, object stores have no folders to check)."""
    return not is_uri(path) and Path(path).is_dir() and any(Path(path).iterdir())
