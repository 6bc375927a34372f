"""The lake on S3-compatible object storage: a location spelled ``s3://bucket/prefix`` and the few
file-system calls the lake makes on it, through pyarrow's S3FileSystem (reads with range requests,
so DuckDB prunes columns and row groups) and boto3 for the one call pyarrow lacks: a conditional
write (``If-None-Match: *``), which is how a snapshot is committed without a rename (see
pipeline.lake.snapshots, "On object storage"; the results store uses the same calls).

The endpoint comes from ``AWS_ENDPOINT_URL`` (AWS S3 when unset), the region from ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, the credentials from the standard AWS variables (or the SDK's usual chain):
never from argv, a manifest or a message.

`ObjectPath` has no ``__fspath__`` on purpose: a local-disk call (``os.link``, ``open``, ``fcntl``)
handed an object location fails loudly instead of writing a folder named ``s3:``.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pipeline.core.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    import pyarrow.dataset
    import pyarrow.fs as pafs

SCHEME = "s3://"


def is_object_url(text: object) -> bool:
    return isinstance(text, (str, ObjectPath)) and str(text).startswith(SCHEME)


@dataclass(frozen=True)
class ObjectStat:
    st_size: int
    st_mtime_ns: int


class ObjectPath:
    """A key (or key prefix, a "folder") in a bucket: the pathlib calls the lake makes, on S3."""

    __slots__ = ("bucket", "key")

    def __init__(self, url: str) -> None:
        if not str(url).startswith(SCHEME):
            raise ValueError(f"{url!r} is not an s3:// location")
        bucket, _, key = str(url)[len(SCHEME):].partition("/")
        key = posixpath.normpath(key).strip("/") if key.strip("/") else ""
        if not bucket or key.startswith(".."):
            raise ConfigError(f"{url!r} is not an object location; spell it s3://BUCKET/PREFIX")
        self.bucket, self.key = bucket, "" if key == "." else key

    # -- names -------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str | os.PathLike[str]) -> ObjectPath:
        return ObjectPath(f"{self}/{os.fspath(part)}")

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(f"{SCHEME}{self.bucket}/{posixpath.dirname(self.key)}")

    @property
    def arrow(self) -> str:
        """The path pyarrow's S3FileSystem takes: bucket/key."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def resolve(self) -> ObjectPath:
        return self

    def relative_to(self, other: ObjectPath) -> str:
        return posixpath.relpath(self.key, other.key) if other.key else self.key

    # -- reads ---------------------------------------------------------------------------------
    def _info(self) -> Any:
        return filesystem().get_file_info(self.arrow)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def read_bytes(self) -> bytes:
        try:
            with filesystem().open_input_stream(self.arrow) as stream:
                return stream.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if "NoSuchKey" in str(exc) or "not found" in str(exc).lower():
                raise FileNotFoundError(str(self)) from None
            raise

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def iterdir(self) -> Iterator[ObjectPath]:
        """The keys and "folders" directly under this prefix, sorted."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.arrow, allow_not_found=True, recursive=False)
        for info in sorted(filesystem().get_file_info(selector), key=lambda i: i.path):
            yield ObjectPath(f"{SCHEME}{info.path}")

    def walk_files(self) -> dict[str, ObjectStat]:
        """Every object under this prefix (one LIST, paged): key relative to it -> size and time."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.arrow, allow_not_found=True, recursive=True)
        found = {}
        for info in filesystem().get_file_info(selector):
            if info.type == pafs.FileType.File:
                found[posixpath.relpath(info.path, self.arrow)] = ObjectStat(info.size or 0, info.mtime_ns or 0)
        return found

    # -- writes --------------------------------------------------------------------------------
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing: a bucket has no folders, a key's prefix exists once a key under it does."""

    def write_bytes(self, data: bytes) -> int:
        """One PUT: the object appears whole or not at all (S3 has no partial objects)."""
        with filesystem().open_output_stream(self.arrow) as stream:
            stream.write(data)
        return len(data)

    def write_text(self, text: str) -> int:
        return self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the object. Through boto3: pyarrow's delete writes an empty "folder" object in
        its place to keep the parent listed, and the lake lists folders (snapshots, heads)."""
        if not missing_ok and not self.is_file():
            raise FileNotFoundError(str(self))
        _client().delete_object(Bucket=self.bucket, Key=self.key)

    def remove_tree(self) -> None:
        """Delete every object under this prefix (batches of 1,000 keys), leaving no folder object."""
        client = _client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.key}/")
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def upload(self, local: str | os.PathLike[str]) -> None:
        import pyarrow.fs as pafs

        pafs.copy_files(os.fspath(local), self.arrow, destination_filesystem=filesystem())

    def copy_from(self, source: ObjectPath) -> None:
        """A server-side copy (CopyObject): no byte passes through this machine."""
        filesystem().copy_file(source.arrow, self.arrow)

    def put_if_absent(self, data: bytes) -> bool:
        """Write the object only if no object has this key (``If-None-Match: *``): True if this call
        wrote it, False if one was there. Of two concurrent calls exactly one wins (AWS S3 since
        2024-08, MinIO, R2, moto). A store that ignores the header would let both win: `put_if_absent`
        then asks for the object's ETag (a HEAD, not a read of it) and answers False unless it is the
        one this PUT wrote (see the contract)."""
        from botocore.exceptions import ClientError

        try:
            written = _client().put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return _client().head_object(Bucket=self.bucket, Key=self.key)["ETag"] == written["ETag"]


def local_folder(root: ObjectPath) -> Path:
    """This machine's folder for what belongs to the object location `root` but is never shared: locks,
    a commit's staging, temporary files before their upload, kept price grids. Under
    `CRYPTOBT_LOCAL_CACHE` (default ``~/.cache/cryptobt/object-lakes``), one per endpoint and location."""
    base = os.environ.get("CRYPTOBT_LOCAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "cryptobt", "object-lakes")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "aws"
    digest = hashlib.sha256(f"{endpoint}|{root}".encode()).hexdigest()[:16]
    return Path(base) / f"{root.bucket}-{digest}"


def location(text: str | os.PathLike[str]) -> Any:
    """`text` as a root's location: an ObjectPath for ``s3://...``, else a local Path."""
    return ObjectPath(str(text)) if is_object_url(text) else Path(text)


def _endpoint() -> tuple[str | None, str]:
    """AWS_ENDPOINT_URL split into (host[:port], scheme), or (None, https) for AWS itself."""
    raw = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not raw:
        return None, "https"
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"AWS_ENDPOINT_URL {raw!r} is not an http(s) URL; e.g. http://127.0.0.1:9000 for MinIO")
    return parsed.netloc, parsed.scheme


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3FileSystem for the environment's endpoint, one per process and endpoint."""
    return _filesystem(_endpoint(), _region())


@cache
def _filesystem(endpoint: tuple[str | None, str], region: str) -> pafs.S3FileSystem:
    import pyarrow.fs as pafs

    host, scheme = endpoint
    return pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region=region,
                             # A path-style address works with MinIO, moto and R2 alike.
                             force_virtual_addressing=False, allow_bucket_creation=False,
                             connect_timeout=5, request_timeout=30)


def _client() -> Any:
    return _boto_client(_endpoint(), _region())


@cache
def _boto_client(endpoint: tuple[str | None, str], region: str) -> Any:
    import boto3

    host, scheme = endpoint
    return boto3.client("s3", endpoint_url=f"{scheme}://{host}" if host else None, region_name=region)


def dataset(paths: list[ObjectPath], **options: Any) -> pyarrow.dataset.Dataset:
    """A pyarrow dataset of the Parquet objects `paths`, for DuckDB to scan as Arrow (``con.register``).

    How DuckDB reads object storage here: its httpfs extension has no wheel for DuckDB 2 and would be
    downloaded at run time; DuckDB over fsspec's wrapper of this file system read garbage ("TProtocolException:
    Invalid data") when its threads shared a file (bench/object_store.py measured the three ways)."""
    import pyarrow.dataset as ds

    return ds.dataset([p.arrow for p in paths], filesystem=filesystem(), format="parquet", **options)


def check_reachable(root: ObjectPath, setting: str) -> None:
    """Fail before any work if the bucket of `root` is missing or cannot be reached: one line naming
    `setting` (HEAD of the bucket: a listing of a missing bucket looks like an empty one)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _client().head_bucket(Bucket=root.bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        reason = (f"the bucket {root.bucket} does not exist" if code in ("404", "NoSuchBucket") else
                  f"access to the bucket {root.bucket} is denied" if code in ("403", "AccessDenied") else
                  f"the store answered {code}")
        raise PipelineError(f"{setting}={root} cannot be read ({reason}); check the bucket, AWS_ENDPOINT_URL "
                            "and the AWS credentials") from None
    except BotoCoreError as exc:
        raise PipelineError(f"{setting}={root} cannot be reached ({str(exc).splitlines()[0][:200]}); check "
                            "AWS_ENDPOINT_URL and the network") from None
