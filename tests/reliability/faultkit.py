"""Helpers for the reliability scenarios: prompt shards with known ids, waiting, finding our own processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def make_shards(d: Path, n: int, shards: int = 4) -> set[str]:
    """n prompts with ids r0000.. over several JSONL shards; returns the ids."""
    d.mkdir(parents=True, exist_ok=True)
    ids = [f"r{i:04d}" for i in range(n)]
    colours, shapes = ["red", "blue", "green", "yellow"], ["circle", "square", "triangle"]
    for k in range(shards):
        with open(d / f"part-{k}.jsonl", "w") as f:
            for i in range(k, n, shards):
                f.write(json.dumps({"id": ids[i], "prompt": f"a {colours[i % 4]} {shapes[i % 3]} number {i}"}) + "\n")
    return set(ids)


def wait_for(fn, timeout: float = 180.0, interval: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError("condition not reached")


def descendant_pid(marker: str) -> int | None:
    """PID of one of *our* descendant processes whose command line contains ``marker`` (e.g. a Ray actor)."""
    import psutil

    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if marker in " ".join(p.cmdline()):
                return p.pid
        except psutil.Error:
            continue
    return None
