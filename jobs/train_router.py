"""Entry for the learned LLM router's training (``dynagen train router`` runs the same code:
``pipelines/training/router.py``).

    python -m jobs.train_router [--data ../shared/data/routing/mmlu_routing_train.parquet] [--out models/router]
                                [--cache-dir /tmp/router-cache] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "routing" / "mmlu_routing_train.parquet"
DEFAULT_OUT = REPO / "models" / "router"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--cache-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=None, help="encoder transformer layers used (default: the router's)")
    p.add_argument("--max-tokens", type=int, default=None, help="prompt window in tokens (default: the router's)")
    a = p.parse_args(argv)
    from pipelines.training.router import train

    report = train(a.data, a.out, seed=a.seed, cache_dir=a.cache_dir, layers=a.layers, max_tokens=a.max_tokens)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
