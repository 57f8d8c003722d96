#!/usr/bin/env python
"""Convert a paper dataset (BrainMRI, BUSI, CheXpert) from the reference layout into a datalist JSON.

    python scripts/prepare_dataset.py SRC_ROOT --output datalist.json [--val-fraction 0.0] [--seed 0]

SRC_ROOT holds samples/train.json and samples/test.json (one JSON record per line, as in the
MediCLIP reference code) and the images under images/. Every listed file is checked; all missing
ones are reported together.
"""

import argparse
import sys
from pathlib import Path

from mediclip_monai.data.datalists import DataError
from mediclip_monai.data.public_datasets import convert_reference_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src_root", type=Path, help="dataset folder with samples/ and images/")
    parser.add_argument(
        "--output", type=Path, default=None, help="datalist JSON (default SRC_ROOT/datalist.json)"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="share of the normal training images held out for validation (default 0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation draw (default 0)")
    args = parser.parse_args(argv)
    output = args.output or args.src_root / "datalist.json"
    try:
        datalist = convert_reference_split(
            args.src_root, output, val_fraction=args.val_fraction, seed=args.seed
        )
    except DataError as e:
        print(e, file=sys.stderr)
        return 1
    test = datalist["test"]
    n_abnormal = sum(e["abnormal"] for e in test)
    n_masks = sum("label" in e for e in test)
    print(
        f"{output}: {len(datalist['training'])} training, {len(datalist.get('validation', []))} validation, "
        f"{len(test)} test ({n_abnormal} abnormal, {n_masks} with masks)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
