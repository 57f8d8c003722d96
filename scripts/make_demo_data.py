#!/usr/bin/env python
"""Build the embedded demo data set (MNI152 brain MRI slices, synthetic test lesions, one DICOM series).

    python scripts/make_demo_data.py [--output DIR] [--seed 0] [--force]

Without --force an existing demo set is left as it is. The bundle builds the same set on first use
(`mediclip_monai.data.ensure_demo_data`); this script rebuilds it, or builds it elsewhere.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

from mediclip_monai.data.datalists import DataError
from mediclip_monai.data.demo import DATALIST_NAME, rebuild_demo_data

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "bundle" / "data" / "demo"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"folder (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder holds a demo set")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    datalist = args.output / DATALIST_NAME
    if datalist.is_file() and not args.force:
        print(f"{datalist} exists; use --force to rebuild")
        return 0
    if args.output.exists() and not datalist.is_file() and any(args.output.iterdir()):
        # Only a folder that holds a demo set (or nothing) is ever replaced, even with --force.
        print(f"{args.output} is not empty and holds no demo set; choose another --output", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        rebuild_demo_data(args.output, seed=args.seed)
    except DataError as e:
        print(e, file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in args.output.rglob("*") if f.is_file())
    print(f"demo set written to {datalist} ({size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
