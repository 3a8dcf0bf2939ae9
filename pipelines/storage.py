"""Locations that are URIs (``s3://bucket/x``, ``gs://...``, ``file:///...``): kept as text, read
and written through ``pyarrow.fs``, checked once before use.

``train.storage_path``, the ``--data`` of train, evaluate and the sweep, prepare's ``--out`` and
``data.path`` may be URIs; Ray Train and pyarrow take them as they are. An S3-compatible server
(MinIO, Ceph, moto) is named by the standard ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
(pyarrow's ``FileSystem.from_uri`` reads them), credentials by ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` or a profile: configuration stays data. The first use of a bucket in a
process probes it (one ``get_file_info`` with short timeouts), so an unreachable endpoint, a
missing bucket or missing credentials stop a stage with one line naming the URI.
"""

from __future__ import annotations

import os
import re
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pipelines.errors import ConfigError, ServiceError

if TYPE_CHECKING:
    import pyarrow.fs

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""where an S3-compatible server is named, the first set wins (as in the AWS SDKs)"""
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
"""any of these set means the AWS SDK has a credential source besides the instance's role"""
S3_ENV = (
    *ENDPOINT_ENV,
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
"""what pyarrow's S3 client reads; Ray workers on other nodes need them too"""
PROBE_TIMEOUT_S = 10.0


def is_uri(path: object) -> bool:
    """``scheme://...``: a location for pyarrow and Ray, not a local path."""
    return isinstance(path, str | os.PathLike) and bool(_SCHEME.match(os.fspath(path)))


class StorageUri(str):
    """A location given as a URI, kept as the text it is (a ``Path`` would fold ``s3://`` into
    ``s3:/``), with the few ``Path`` operations the stages use on their locations."""

    def __truediv__(self, part: str | os.PathLike[str]) -> StorageUri:
        return StorageUri(self.rstrip("/") + "/" + os.fspath(part).lstrip("/"))

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> StorageUri:
        return StorageUri(self.rstrip("/").rsplit("/", 1)[0])

    def as_uri(self) -> str:
        return str(self)

    def exists(self) -> bool:
        return _file_type(self) != "NotFound"

    def is_file(self) -> bool:
        return _file_type(self) == "File"

    def is_dir(self) -> bool:
        return _file_type(self) == "Directory"


def endpoint() -> str | None:
    """The S3-compatible endpoint the environment names, if any."""
    return next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)


def _has_credentials() -> bool:
    if any(os.environ.get(k) for k in CREDENTIAL_ENV):
        return True
    home = Path.home() / ".aws"
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / "credentials",
        os.environ.get("AWS_CONFIG_FILE") or home / "config",
    )
    return any(Path(f).is_file() for f in files)


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """``(filesystem, path on it)`` for ``uri``, probed on the first use of its bucket."""
    import pyarrow.fs

    parsed = urlparse(uri)
    check_location(f"{parsed.scheme}://{parsed.netloc}")
    return pyarrow.fs.FileSystem.from_uri(uri)


def local_path(uri: str) -> Path | None:
    """The local path a ``file://`` URI names (written atomically like any local path)."""
    return Path(urlparse(uri).path) if urlparse(uri).scheme == "file" else None


def check_location(uri: str) -> None:
    """Stop with one line naming ``uri`` if its bucket cannot be used: no credentials for an
    S3-compatible endpoint, endpoint unreachable, bucket missing or access denied. Once per
    bucket, endpoint and credentials in a process."""
    parsed = urlparse(uri)
    _check(f"{parsed.scheme}://{parsed.netloc}", endpoint(), _has_credentials())


@cache
def _check(bucket_uri: str, endpoint_url: str | None, has_credentials: bool) -> None:
    scheme = urlparse(bucket_uri).scheme
    if scheme == "file":
        return
    where = f" at {endpoint_url}" if endpoint_url and scheme == "s3" else ""
    if scheme == "s3" and endpoint_url and not has_credentials:
        # an S3-compatible server has no instance role to fall back on: without this check the
        # AWS SDK would send unsigned requests and fail on the first write, mid-run
        raise ConfigError(
            f"no credentials for {bucket_uri}{where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    outcome: dict[str, object] = {}

    def probe() -> None:
        try:
            fs, bucket = _probe_filesystem(bucket_uri, endpoint_url)
            outcome["type"] = fs.get_file_info(bucket).type.name
        except Exception as err:  # pyarrow raises OSError/ArrowException with the SDK's text
            outcome["error"] = err

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT_S)
    hint = (
        "check AWS_ENDPOINT_URL and the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
        "or AWS_PROFILE)"
        if scheme == "s3"
        else "check the address and the credentials"
    )
    if worker.is_alive():
        raise ServiceError(
            f"{bucket_uri}{where} did not answer within {PROBE_TIMEOUT_S:.0f} s; {hint}"
        )
    if "error" in outcome:
        text = " ".join(str(outcome["error"]).split())
        if re.search(r"ACCESS_DENIED|AccessDenied|HTTP status 40[13]", text):
            raise ConfigError(f"access to {bucket_uri}{where} denied ({text}); {hint}")
        raise ServiceError(f"cannot reach {bucket_uri}{where} ({text}); {hint}")
    if outcome["type"] == "NotFound":
        raise ConfigError(f"the bucket of {bucket_uri}{where} does not exist; create it first")


def _probe_filesystem(
    bucket_uri: str, endpoint_url: str | None
) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem of ``bucket_uri`` with short timeouts and no retries (S3), for the probe:
    an unreachable endpoint answers in seconds, not after the SDK's retries."""
    import pyarrow.fs

    parsed = urlparse(bucket_uri)
    if parsed.scheme != "s3":
        return pyarrow.fs.FileSystem.from_uri(bucket_uri)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not endpoint_url and not region:
        region = pyarrow.fs.resolve_s3_region(parsed.netloc)
    fs = pyarrow.fs.S3FileSystem(
        region=region or "us-east-1",
        endpoint_override=endpoint_url,
        connect_timeout=3,
        request_timeout=5,
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=1),
    )
    return fs, parsed.netloc


def _file_type(uri: str) -> str:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type.name


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def upload(local: Path, uri: str) -> None:
    """Copy a finished local file to ``uri``. An object store makes an object visible only once
    its upload completes (a single PUT, or the final call of a multipart upload), so a reader
    sees the old object or the new one, whole: as atomic as the local temp-file-and-rename."""
    fs, path = filesystem(uri)  # no create_dir: object stores have no folders (file:// URIs
    # are written as local paths, see atomic.atomic_path)
    with local.open("rb") as src, fs.open_output_stream(path) as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)


def download(uri: str, dest: Path) -> Path:
    """Copy the file or folder at ``uri`` under ``dest``; returns the local copy."""
    import pyarrow.fs

    fs, path = filesystem(uri)
    target = dest / (path.rstrip("/").rsplit("/", 1)[-1] or "data")
    if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
        target.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(target), source_filesystem=fs)
    return target
