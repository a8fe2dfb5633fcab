"""Entry for StepSaver calibration: called by ``dynagen calibrate`` and, on a cluster, as a Ray Jobs entrypoint.

    python -m jobs.calibrate --model models/tiny-sd --prompts synth:200 --out cal.parquet --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence


def load_prompts(source: str | Sequence[str], limit: int | None = None) -> list[str]:
    """Prompts from a list, ``synth:N[:SEED]`` (the synthetic world's captions), a .txt (one per line),
    .json (array of strings or of {"text"|"prompt": ...}), .jsonl, or .parquet/.csv with a ``prompt`` column."""
    if not isinstance(source, str):
        prompts = list(source)
    elif source.startswith("synth:"):
        from dynagen.world.synth import example_prompts

        parts = source.split(":")
        prompts = example_prompts(int(parts[1]), int(parts[2]) if len(parts) > 2 else 0)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {path}")
        if path.suffix == ".txt":
            prompts = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
        elif path.suffix in (".json", ".jsonl"):
            text = path.read_text()
            items = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
            prompts = [x if isinstance(x, str) else (x.get("prompt") or x.get("text")) for x in items]
        elif path.suffix in (".parquet", ".csv"):
            import pyarrow.csv as pcsv
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=["prompt"]) if path.suffix == ".parquet" else pcsv.read_csv(path)
            prompts = table.column("prompt").to_pylist()
        else:
            raise ValueError(f"unsupported prompts file {path} (.txt, .json, .jsonl, .parquet, .csv or synth:N)")
    # Duplicates would only weight a prompt twice in training; the label is per prompt × seed anyway.
    prompts = list(dict.fromkeys(prompts))
    return prompts[:limit] if limit else prompts


def run(
    model: str,
    prompts: str | Sequence[str],
    out: str,
    scheduler: str = "auto",
    seeds: Sequence[int] = (0, 1, 2),
    grid: Sequence[int] | None = None,
    reference_steps: int = 200,
    threshold: float = 0.90,
    limit: int | None = None,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    num_threads: int | None = None,
    batch_size: int = 48,
    rows_per_window: int = 48,
    early_stop: bool = False,
    distinct_seeds: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Calibrate and write ``out``; returns the summary dict (also written beside ``out`` as ``*.summary.json``)."""
    from dynagen.core.raycluster import ensure_ray
    from dynagen.core.settings import RaySettings
    from pipelines.calibrate import DEFAULT_GRID
    from pipelines.calibrate import run as calibrate

    plist = load_prompts(prompts, limit)
    ensure_ray(RaySettings(address=address, num_cpus=num_cpus))
    summary = calibrate(
        plist, out, model=model, scheduler=scheduler, seeds=list(seeds), grid=list(grid or DEFAULT_GRID),
        reference_steps=reference_steps, threshold=threshold, actors=actors, cpus_per_actor=cpus_per_actor,
        num_threads=num_threads, batch_size=batch_size, rows_per_window=rows_per_window,
        early_stop=early_stop, distinct_seeds=distinct_seeds,
    ).to_dict()
    Path(str(out).removesuffix(".parquet") + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    import os

    from dynagen.core.settings import SCHEDULER_NAMES

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/tiny-sd")
    p.add_argument("--prompts", required=True, help="file or synth:N[:SEED]")
    p.add_argument("--out", required=True)
    p.add_argument("--scheduler", default="auto", choices=list(SCHEDULER_NAMES))
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--grid", type=_ints, default=None)
    p.add_argument("--reference-steps", type=int, default=200)
    p.add_argument("--threshold", type=float, default=0.90)
    p.add_argument("--limit", type=int)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--num-threads", type=int)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--rows-per-window", type=int, default=48)
    p.add_argument("--early-stop", action="store_true", help="stop each row at its first count ≥ threshold")
    p.add_argument("--distinct-seeds", action="store_true", help="each prompt gets its own seeds (--seeds = offsets)")
    p.add_argument("--address")
    a = p.parse_args(argv)
    s = run(a.model, a.prompts, a.out, a.scheduler, a.seeds, a.grid, a.reference_steps, a.threshold, a.limit,
            a.actors, a.cpus_per_actor, a.num_threads, a.batch_size, a.rows_per_window, a.early_stop,
            a.distinct_seeds, address=a.address)
    print(json.dumps(s, indent=2))
    return 0 if s["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
