"""S3 behind the registry: docker-registry's `s3` driver on moto's S3 server, blob GETs redirected to presigned URLs.

- `MotoServer`: moto's standalone S3 server (`python -m moto.server`, PyPI's moto[server], the `test` extra) on
  127.0.0.1. moto keeps the objects; it does not check signatures or expiry.
- `S3Front`: a stand-in of ours in front of moto for what real S3 enforces on a presigned URL and moto does not:
  the signature (SigV4, query string), the expiry, and "only one auth mechanism" (a presigned request that also
  carries `Authorization` is refused with 400 InvalidArgument). It answers with S3's XML errors; everything
  else passes through to moto. It is a FaultProxy: tests add faults (resets, cuts) on top.
- `S3Registry`: distribution's `s3` driver against the front (regionendpoint, secure: false, v4auth: true, no
  `AWS_*` variables in its environment), redirects on, and the in-memory blob-descriptor cache that Debian's
  default config enables. Presigned URLs therefore name the front. Damages go straight into the bucket at moto.
- `S3Lab`: moto and the front, a template bucket seeded once through a registry, a fresh copy for each use.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit
from xml.sax.saxutils import escape

import requests

from .faults import Exchange, Fault, FaultProxy, Respond
from .registry import ObjectStoreRegistry, OnLoopback, free_port, start_daemon, stop_process

ACCESS_KEY = "registry-lab"
SECRET_KEY = "registry-lab-not-a-secret"
REGION = "us-east-1"
T = TypeVar("T")


def s3_available() -> Optional[str]:
    """None when this Python can run the S3 lab, else what is missing."""
    for module in ("moto", "flask", "boto3"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is missing from {sys.executable} (pip install -e '.[test]': moto[server])"
    return None


class MotoServer(OnLoopback):
    """moto's S3 server on 127.0.0.1:<free port>, its log in `workdir`; a context manager that always stops it."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / "moto.log"
        self.process: Optional[subprocess.Popen] = None

    def start(self, wait: float = 30.0) -> MotoServer:
        self.process = start_daemon([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                    self.log_path, lambda: requests.get(self.url, timeout=1).ok,
                                    f"moto on {self.url}", wait)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def s3_error(status: int, code: str, message: str, **extra: str) -> Respond:
    """An answer as S3 words its errors: XML with Code and Message (and whatever else it adds)."""
    fields = {"Code": code, "Message": message, **extra, "RequestId": "registry-lab"}
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields.items()) + "</Error>").encode()
    return Respond(status, body, {"Content-Type": "application/xml"})


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def presigned_signature(method: str, path: str, query: str, host: str, secret: str = SECRET_KEY) -> str:
    """The SigV4 query-string signature of a presigned request (S3 signs the path as sent and UNSIGNED-PAYLOAD)."""
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "X-Amz-Signature"]
    named = dict(params)
    signed = named.get("X-Amz-SignedHeaders", "host").split(";")
    headers = {"host": host}
    canonical = "\n".join([method, path, "&".join(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted(params)),
                           "".join(f"{name}:{headers.get(name, '')}\n" for name in signed), ";".join(signed),
                           "UNSIGNED-PAYLOAD"])
    scope = named.get("X-Amz-Credential", "").split("/", 1)[-1]
    to_sign = "\n".join(["AWS4-HMAC-SHA256", named.get("X-Amz-Date", ""), scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


ONE_AUTH = ("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string "
            "parameter or the Authorization header should be specified")
MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your key and "
            "signing method.")


class S3Front(FaultProxy):
    """A stand-in of ours for S3's checks of presigned URLs, in front of moto (which makes none of them).

    A request with `X-Amz-Signature` in its query is presigned: with an `Authorization` header as well it gets
    400 InvalidArgument; past `X-Amz-Date` + `X-Amz-Expires` (by this front's clock, `clock_offset` seconds
    ahead of the machine's) 403 AccessDenied "Request has expired"; with a signature that does not verify with
    the lab's secret 403 SignatureDoesNotMatch. Requests signed in their Authorization header (the registry's
    own) pass through unchecked. `refused` records (code, path) of each refusal."""

    def __init__(self, upstream_url: str, secret: str = SECRET_KEY):
        super().__init__(upstream_url)
        self.secret = secret
        self.clock_offset = 0.0
        self.refused: List[tuple] = []

    def clear(self) -> None:
        """Rules, the request log, refusals and the clock offset, for the next test."""
        super().clear()
        self.refused.clear()
        self.clock_offset = 0.0

    def admit(self, exchange: Exchange) -> Optional[Fault]:
        parts = urlsplit(exchange.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if "X-Amz-Signature" not in query:
            return None
        refusal = self._refusal(exchange, parts.path, parts.query, query)
        if refusal is not None:
            self.refused.append((refusal[1], parts.path))
            return s3_error(*refusal)
        return None

    def _refusal(self, exchange: Exchange, path: str, raw_query: str, query: Dict[str, str]) -> Optional[tuple]:
        if "Authorization" in exchange.handler.headers:
            return 400, "InvalidArgument", ONE_AUTH
        try:
            signed_at = datetime.datetime.strptime(query.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ").replace(
                tzinfo=datetime.UTC).timestamp()
            expires = int(query.get("X-Amz-Expires", ""))
        except ValueError:
            return 400, "AuthorizationQueryParametersError", "X-Amz-Date and X-Amz-Expires must be given"
        if time.time() + self.clock_offset > signed_at + expires:
            return 403, "AccessDenied", "Request has expired"
        host = exchange.handler.headers.get("Host", "")
        if not hmac.compare_digest(presigned_signature(exchange.method, path, raw_query, host, self.secret),
                                   query["X-Amz-Signature"]):
            return 403, "SignatureDoesNotMatch", MISMATCH
        return None

    def presigned(self) -> List[Dict[str, str]]:
        """The presigned requests that reached the front (method, path, headers), in order."""
        return [r for r in self.requests if "X-Amz-Signature=" in r["path"]]


class Bucket:
    """Objects in one bucket at moto, reached directly (not through the front): how the lab damages storage."""

    def __init__(self, moto_url: str, name: str):
        import boto3  # only the S3 lab needs it: it comes with moto
        self.name = name
        self.client: Any = boto3.client("s3", endpoint_url=moto_url, aws_access_key_id=ACCESS_KEY,
                                        aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def create(self) -> Bucket:
        self.client.create_bucket(Bucket=self.name)
        return self

    def keys(self) -> List[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def copy_to(self, target: str) -> Bucket:
        """A new bucket `target` holding a server-side copy of every object of this one."""
        copy = Bucket.__new__(Bucket)
        copy.name, copy.client = target, self.client
        copy.create()
        for key in self.keys():
            self.client.copy_object(Bucket=target, Key=key, CopySource={"Bucket": self.name, "Key": key})
        return copy


class S3Registry(ObjectStoreRegistry):
    """docker-registry on 127.0.0.1 storing into `bucket` through the front at `endpoint`, redirecting blob GETs
    (and HEADs) to presigned URLs there; the in-memory blob-descriptor cache on (as Debian's default config)."""

    def __init__(self, workdir: Path, endpoint: str, bucket: Bucket, *, config: Optional[dict] = None,
                 port: Optional[int] = None):
        super().__init__(workdir, config=config, port=port)
        self.endpoint = endpoint
        self.bucket = bucket

    def config(self) -> dict:
        config = super().config()
        storage: dict = {key: value for key, value in config["storage"].items() if key != "filesystem"}
        storage["s3"] = {"accesskey": ACCESS_KEY, "secretkey": SECRET_KEY, "region": REGION,
                         "regionendpoint": self.endpoint, "bucket": self.bucket.name, "secure": False,
                         "v4auth": True}
        storage["redirect"] = {"disable": False}
        storage["cache"] = {"blobdescriptor": "inmemory"}
        config["storage"] = storage
        return config

    def start(self, wait: float = 15.0) -> S3Registry:
        super().start(wait)
        return self

    def __enter__(self) -> S3Registry:
        return self.start()

    def clone(self, workdir: Path, **kwargs) -> ObjectStoreRegistry:
        raise NotImplementedError("use S3Lab.registry(): buckets are copied at moto")

    # -- damage, in the bucket -------------------------------------------------------------------------

    def truncate_blob(self, digest: str, keep: int) -> None:
        key = self.object_name(digest)
        self.bucket.put(key, self.bucket.get(key)[:keep])

    def flip_byte(self, digest: str, offset: int = 0) -> None:
        key = self.object_name(digest)
        data = bytearray(self.bucket.get(key))
        data[offset] ^= 0xFF
        self.bucket.put(key, bytes(data))

    def replace_blob(self, digest: str, data: bytes) -> None:
        self.bucket.put(self.object_name(digest), data)

    def delete_blob(self, digest: str) -> None:
        self.bucket.delete(self.object_name(digest))


@dataclass
class S3Lab:
    """moto and the front (started and stopped with the lab), a template bucket seeded once, copies per use."""

    workdir: Path
    moto: Optional[MotoServer] = None
    front: Optional[S3Front] = None
    template: str = "registry-template"
    _count: int = 0

    def __enter__(self) -> S3Lab:
        self.moto = MotoServer(self.workdir / "moto").start()
        try:
            self.front = S3Front(self.moto.url).__enter__()
        except BaseException:
            self.moto.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.front is not None:
            self.front.__exit__(*exc)
        if self.moto is not None:
            self.moto.stop()

    @property
    def started(self) -> tuple:
        assert self.moto is not None and self.front is not None, "use S3Lab as a context manager"
        return self.moto, self.front

    def bucket(self, name: str) -> Bucket:
        return Bucket(self.started[0].url, name)

    def seed(self, seeder: Callable[[S3Registry], T]) -> T:
        """A registry on the (new) template bucket; calls `seeder(registry)` and returns its result."""
        with S3Registry(self.workdir / "template", self.started[1].url, self.bucket(self.template).create()
                        ) as registry:
            return seeder(registry)

    def registry(self, *, workdir: Optional[Path] = None, config: Optional[dict] = None) -> S3Registry:
        """A started registry on a fresh copy of the template bucket (the caller stops it)."""
        self._count += 1
        name = f"registry-{self._count}"
        bucket = self.bucket(self.template).copy_to(name)
        return S3Registry(workdir or self.workdir / name, self.started[1].url, bucket, config=config).start()
