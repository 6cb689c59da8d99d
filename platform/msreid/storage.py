"""Local directories and object storage (``s3://bucket/prefix``) behind one small interface.

Everything goes through ``pyarrow.fs``, which Ray Data and Ray Train use too.
Endpoint and credentials follow the AWS conventions, read by the AWS SDK
inside pyarrow, never by msreid: ``AWS_ENDPOINT_URL`` (one variable for MinIO,
Ceph RGW, SeaweedFS and other S3-compatible stores), ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` with ``~/.aws``, and EC2 instance
roles. A URI carrying credentials itself (``s3://KEY:SECRET@bucket``,
``?secret_key=``) is refused: it would be recorded in Ray's experiment state
and MLflow's parameters.

``check_store`` is the pre-flight check the benchmark driver runs before any
trial: a missing bucket, refused credentials or an unreachable endpoint become
one ``UserError`` within seconds (a few short attempts, not the SDK's long
retry loop).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from msreid.errors import UserError

SECRET_QUERY_KEYS = ("access_key", "secret_key", "session_token")
PROBE_TIMEOUT_S = 5.0
PROBE_ATTEMPTS = 2


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` (object storage, ``file://``), False for a plain path."""
    return "://" in str(path)


def join(root: str | Path, *parts: str) -> str:
    """``root/part/...``: URIs joined with ``/``, local paths with the OS separator."""
    if is_uri(root):
        return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root, *parts))


def endpoint() -> str:
    """The S3 endpoint in effect: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS."""
    return (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or "AWS (no AWS_ENDPOINT_URL)")


def check_uri(uri: str, what: str) -> None:
    """UserError when ``uri`` carries credentials (they would be recorded with the run)."""
    if not is_uri(uri):
        return
    parts = urlsplit(uri)
    secret_keys = [k for k in parse_qs(parts.query) if k.lower() in SECRET_QUERY_KEYS]
    if "@" in parts.netloc or secret_keys:
        raise UserError(f"{what}: the URI {redact(uri)} carries credentials; they would be "
                        "recorded in Ray's experiment state and MLflow. Remove them from the URI "
                        "and use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the "
                        "node's IAM role")


def redact(uri: str) -> str:
    """``uri`` with any credentials (user info, secret query values) replaced by ``***``."""
    parts = urlsplit(str(uri))
    if not parts.scheme:
        return str(uri)
    netloc = parts.netloc.rpartition("@")[2]
    netloc = f"***@{netloc}" if "@" in parts.netloc else netloc
    query = "&".join(f"{k}=***" if k.lower() in SECRET_QUERY_KEYS else f"{k}={v}"
                     for k, values in parse_qs(parts.query).items() for v in values)
    return parts._replace(netloc=netloc, query=query).geturl()


def filesystem(path_or_uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI (``file://``, ``s3://``, ``gs://``)."""
    if not is_uri(path_or_uri):
        return pafs.LocalFileSystem(), os.path.abspath(str(path_or_uri))
    check_uri(str(path_or_uri), "storage")
    try:
        return pafs.FileSystem.from_uri(str(path_or_uri))
    except (pa.ArrowInvalid, ValueError, OSError) as exc:
        raise UserError(f"{path_or_uri}: not a storage URI pyarrow can open ({exc})") from None


def _probe_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """As ``filesystem``, but an S3 client that gives up within seconds (pre-flight checks)."""
    if not uri.startswith("s3://"):
        return filesystem(uri)
    check_uri(uri, "storage")
    override = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None and override is None:  # real AWS: the bucket's own region
        region = filesystem(uri)[0].region
    fs = pafs.S3FileSystem(region=region or "us-east-1", endpoint_override=override,
                           connect_timeout=PROBE_TIMEOUT_S, request_timeout=PROBE_TIMEOUT_S,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(PROBE_ATTEMPTS))
    return fs, uri[len("s3://"):].rstrip("/")


def describe(exc: BaseException) -> str:
    """What an S3 error means for the user, in a few words, then the SDK's own message."""
    text = str(exc)
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "resolve host" in text:
        why = f"the endpoint {endpoint()} cannot be reached; check AWS_ENDPOINT_URL and the network"
    elif any(code in text for code in ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH",
                                       "INVALID_ACCESS_KEY_ID", "Forbidden", "403")):
        why = ("access denied; check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
               "AWS_PROFILE or the node's IAM role) and the bucket's policy")
    elif "NO_SUCH_BUCKET" in text:
        why = "the bucket does not exist; create it or fix the URI"
    else:
        why = "the storage refused the request"
    return f"{why} ({text.splitlines()[0][:300]})"


def check_store(root: str, what: str, write: bool = True) -> None:
    """UserError unless ``root`` (a directory or URI) can be listed and, with ``write``, written.

    For ``s3://`` roots: the bucket must exist (nothing creates it implicitly) and
    a probe object is written and deleted under the prefix. Local roots only need
    to be creatable.
    """
    if not is_uri(root):
        return
    fs, path = _probe_filesystem(root)
    bucket = path.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise UserError(f"{what} {redact(root)}: the bucket {bucket!r} does not exist at "
                            f"{endpoint()}; create it or fix the URI")
        if write:
            probe = posixpath.join(path, f".msreid-probe-{uuid.uuid4().hex}")
            with fs.open_output_stream(probe) as out:
                out.write(b"msreid write probe\n")
            fs.delete_file(probe)
    except OSError as exc:
        raise UserError(f"{what} {redact(root)}: {describe(exc)}") from None


def exists(path_or_uri: str) -> bool:
    fs, path = filesystem(path_or_uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_text(path_or_uri: str, text: str) -> None:
    fs, path = filesystem(path_or_uri)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def upload_dir(local: str | Path, uri: str) -> None:
    """Copy the local directory ``local`` (recursively) to ``uri``, file by file."""
    fs, path = filesystem(uri)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def download_dir(uri: str, local: str | Path) -> Path:
    """Copy the directory ``uri`` (recursively) into the local directory ``local``."""
    fs, path = filesystem(uri)
    Path(local).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return Path(local)


def list_dirs(uri: str) -> list[str]:
    """Names of the sub-directories directly under ``uri`` (none when it does not exist)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path))
                  if i.type == pafs.FileType.Directory)


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.delete_dir(path)
