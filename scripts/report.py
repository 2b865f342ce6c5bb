#!/usr/bin/env python
"""Write report.md with PNG plots into a run directory: ``python scripts/report.py runs/<dir>``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reporting.report import write_report  # noqa: E402
from store.names import RUN_PARAMS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory (runs/<UTC time>-<hash>)")
    parser.add_argument("--top-k", type=int, default=100, help="QM9 top-k line in lookup mode")
    args = parser.parse_args()
    if not (args.run_dir / RUN_PARAMS).is_file():
        parser.error(f"{args.run_dir} is not a run directory (no {RUN_PARAMS})")
    print(write_report(args.run_dir, top_k=args.top_k))


if __name__ == "__main__":
    main()
