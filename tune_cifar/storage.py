"""Files on local disks, NFS, s3:// or gs://: paths, reads, and the one atomic writer. Torch-free.

Local writes go to a temporary file in the same folder, are fsynced, then renamed over the target,
so a kill leaves the old file or the new one, never half of one. URIs go through pyarrow's
filesystems (object stores publish a written object whole or not at all).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(root: str | os.PathLike, *parts: str) -> str:
    """Path join that keeps URIs (s3://bucket/x) intact; local paths come back absolute."""
    if is_uri(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root, *parts).absolute())


def trial_path(experiment: str | os.PathLike, tune_path: str | os.PathLike) -> str:
    """The trial folder Tune names `tune_path`, under the experiment's own path or URI. Tune's Trial.path and
    Result.path drop a URI's scheme (s3://bucket/exp/t becomes bucket/exp/t): joined onto as they are, they
    would put our files on the driver's disk, relative to its working folder."""
    return join(experiment, PurePosixPath(str(tune_path)).name)


class StorageError(Exception):
    """The storage path cannot be written or read; the message names it and says what to do."""


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


def exists(path: str | os.PathLike) -> bool:
    """Whether anything (a file, a folder) is at `path`."""
    if is_uri(path):
        pafs, fs, inner = _filesystem(str(path))
        return fs.get_file_info(inner).type != pafs.FileType.NotFound
    return Path(path).exists()


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


def list_files(root: str | os.PathLike) -> list[str]:
    """Every file under `root` (path or URI), as paths relative to it, sorted."""
    if not is_uri(root):
        return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())
    pafs, fs, inner = _filesystem(str(root))
    inner = inner.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=True))
    return sorted(i.path[len(inner) + 1:] for i in infos if i.type == pafs.FileType.File)


def check_writable(path: str | os.PathLike) -> None:
    """Write and delete a probe file where `path`'s files would go, or raise StorageError saying why not.

    A real write, not os.access: root passes os.access under /proc, and only a write shows an object
    store's endpoint, credentials and bucket working together. The probe has a name of its own, so
    nothing there is overwritten.
    """
    probe = f".tune-cifar-probe-{uuid.uuid4().hex}"
    if not is_uri(path):
        existing = Path(path).absolute()
        while not existing.exists():
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is not a folder")
            (existing / probe).write_bytes(b"")
            (existing / probe).unlink()
        except OSError as e:
            raise StorageError(f"storage path {path} is not writable ({e}); pass --storage-path with a folder "
                               f"you can write") from None
        return
    if "?" in str(path):  # join() appends to the URI's end, which would go into its query string
        raise StorageError(f"storage path {path}: options in the URI are not supported; give the endpoint as "
                           f"AWS_ENDPOINT_URL=http://host:port instead")
    try:
        pafs, fs, inner = _filesystem(str(path))
        if isinstance(fs, pafs.LocalFileSystem):
            return check_writable(inner)
        bucket = inner.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"storage path {path}: bucket {bucket!r} does not exist; create it, or fix the "
                               f"bucket's name in --storage-path")
        with fs.open_output_stream(f"{inner.rstrip('/')}/{probe}"):
            pass
        fs.delete_file(f"{inner.rstrip('/')}/{probe}")
    except (OSError, ValueError) as e:  # pyarrow raises OSError for the store's errors, ValueError for bad URIs
        raise StorageError(f"storage path {path} cannot be written: {_advice(str(e))}") from None


def _advice(error: str) -> str:
    """What to do about one of pyarrow's object-store errors (the error itself, first line, goes with it)."""
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if "NETWORK_CONNECTION" in error or "Could not connect" in error or "resolve host" in error:
        where = f"the endpoint {endpoint} (AWS_ENDPOINT_URL)" if endpoint else "the storage service"
        return f"cannot reach {where}; check the address and that the server is up ({first})"
    if not _credentials_given():  # unsigned requests then: the store refuses them (as it should)
        return (f"no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give "
                f"the node an instance role ({first})")
    if "ACCESS_DENIED" in error or "403" in error:
        return f"access denied; check that the credentials given may write there ({first})"
    return f"{first}; check --storage-path and the storage's credentials and endpoint"


def _credentials_given() -> bool:
    """Whether any credential source other than an instance role is set (AWS's own chain, minus the network)."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "GOOGLE_APPLICATION_CREDENTIALS")
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
             os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))
    return any(os.environ.get(n) for n in names) or any(Path(f).expanduser().is_file() for f in files)
