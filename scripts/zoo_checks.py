#!/usr/bin/env python
"""The MONAI model zoo's checks of a bundle folder that run offline, on the CPU; one line per check.

    python scripts/zoo_checks.py DIR/mediclip_anomaly_detection [--full]

Reimplemented from the zoo's published rules (its CONTRIBUTING.md and pre-commit configuration), not copied:
necessary and preferred files, large files (over 25 MB: listed in large_files.yml with a url, and their
hash when given), version and changelog, metadata.json against a schema written from those rules
(``scripts/zoo_meta_schema.json``, through MONAI's own ``verify_metadata``), the config keys the zoo asks
for, and the pre-commit formatting (pretty JSON with indent 4, final newline, no trailing whitespace, YAML
that parses, module docstrings first, no file over 1 MB but the large files). ``--full`` adds what the
zoo's CI runs in its full mode: the inference workflow's properties, MONAI's ``verify_net_in_out`` on
configs/inference.json and the TorchScript export (the traced one this bundle supports; its model card says
why scripting is not).
Like the zoo's verify_bundle.py, the bundle folder goes first on ``sys.path``, so its own code is used.
Prints ``PASS <check>`` or ``FAIL <check>: <why>`` for each; exits 1 when any fails.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import tokenize
import traceback
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parent / "zoo_meta_schema.json"
ZOO_FILE_LIMIT = 25 * 2**20  # CONTRIBUTING: no file over 25 MB in the zoo's repository
PRECOMMIT_LIMIT_KB = 1024  # pre-commit: check-added-large-files --maxkb=1024
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
TEXT_SUFFIXES = {".json", ".yml", ".yaml", ".md", ".txt", ".py", ".conf", ""}
INFERENCE_KEYS = ("bundle_root", "device", "network_def", "inferer", "output_dir")
TRAIN_KEYS = (
    "bundle_root",
    "device",
    "dataset_dir",
    "output_dir",
    "train::trainer",
    "train::trainer::max_epochs",
    "train::dataset",
    "train::dataset::data",
    "train::handlers",
    "train::preprocessing",
    "train::inferer",
    "validate::evaluator",
    "validate::handlers",
    "validate::dataset",
    "validate::dataset::data",
    "validate::preprocessing",
    "validate::inferer",
    "validate::key_metric",
    "val_interval",
)


class CheckFailed(Exception):
    """What a check found wrong."""


def large_files(bundle: Path) -> list[dict]:
    """The entries of large_files.yml (or .yaml/.json); [] when the bundle has none."""
    for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
        path = bundle / name
        if path.is_file():
            content = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
            entries = (content or {}).get("large_files")
            if not isinstance(entries, list):
                raise CheckFailed(f"{name}: no 'large_files' list")
            return entries
    return []


def check_necessary_files(bundle: Path) -> None:
    for name in ("configs/metadata.json", "LICENSE"):
        if not (bundle / name).is_file():
            raise CheckFailed(f"necessary file {name} is missing")


def check_preferred_files(bundle: Path) -> None:
    listed = {entry.get("path") for entry in large_files(bundle)}
    if not (bundle / "models" / "model.pt").is_file() and "models/model.pt" not in listed:
        raise CheckFailed("models/model.pt is neither in the bundle nor in large_files.yml")
    if not any((bundle / "configs" / f"inference.{suffix}").is_file() for suffix in ("json", "yaml", "yml")):
        raise CheckFailed("configs/inference.json is missing")


def check_large_files(bundle: Path) -> None:
    entries = large_files(bundle)
    for entry in entries:
        if not entry.get("path") or not entry.get("url"):
            raise CheckFailed(f"large_files entry without path or url: {entry}")
        hash_type, hash_val = entry.get("hash_type") or "md5", entry.get("hash_val")
        if hash_type not in HASH_TYPES:
            raise CheckFailed(f"{entry['path']}: hash_type {hash_type} is not one of {', '.join(HASH_TYPES)}")
        path = bundle / entry["path"]
        if hash_val and path.is_file():
            digest = hashlib.new(hash_type, path.read_bytes()).hexdigest()
            if digest != hash_val:
                raise CheckFailed(f"{entry['path']}: {hash_type} {digest} is not the listed {hash_val}")
    listed = {entry["path"] for entry in entries}
    for path in bundle.rglob("*"):
        relative = path.relative_to(bundle).as_posix()
        if path.is_file() and path.stat().st_size > ZOO_FILE_LIMIT and relative not in listed:
            raise CheckFailed(f"{relative} is over 25 MB and not in large_files.yml")


def check_version_changelog(bundle: Path) -> None:
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in ("version", "changelog"):
        if key not in metadata:
            raise CheckFailed(f"'{key}' is missing in configs/metadata.json")
    if metadata["version"] not in metadata["changelog"]:
        raise CheckFailed(f"version {metadata['version']} is not in the changelog")


def check_metadata_schema(bundle: Path) -> None:
    from monai.bundle import verify_metadata

    # without it MONAI's verify_metadata fails on its own placeholder class, not on the metadata
    if importlib.util.find_spec("jsonschema") is None:
        raise CheckFailed("needs the package 'jsonschema', which is not installed: pip install -e \".[zoo]\"")

    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))


def check_config_keys(bundle: Path) -> None:
    from monai.bundle import ConfigParser

    for name, keys in (("inference.json", INFERENCE_KEYS), ("train.json", TRAIN_KEYS)):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / name))
        missing = [key for key in keys if key not in parser]
        if missing:
            raise CheckFailed(f"configs/{name} lacks {', '.join(missing)}")
    train = json.loads((bundle / "configs" / "train.json").read_text())
    validation = [h for h in train["train"]["handlers"] if h.get("_target_") == "ValidationHandler"]
    if any(h.get("interval") != "@val_interval" for h in validation):
        raise CheckFailed("configs/train.json: ValidationHandler's interval is not @val_interval")


def tracked_files(bundle: Path) -> list[Path]:
    """The files a zoo pull request would add: all but the large files and Python caches."""
    listed = {entry["path"] for entry in large_files(bundle)}
    return [
        path
        for path in sorted(bundle.rglob("*"))
        if path.is_file() and path.relative_to(bundle).as_posix() not in listed and "__pycache__" not in path.parts
    ]


def docstring_problem(source: str) -> str | None:
    """What pre-commit's check-docstring-first refuses: a module docstring after code, or two of them."""
    docstring_seen = code_seen = False
    skipped = {tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and token.start[1] == 0:
            if docstring_seen:
                return "a second module docstring"
            if code_seen:
                return "module docstring after code"
            docstring_seen = True
        elif token.type not in skipped:
            code_seen = True
    return None


def check_precommit_formatting(bundle: Path) -> None:
    problems = []
    for path in tracked_files(bundle):
        relative = path.relative_to(bundle).as_posix()
        if path.stat().st_size > PRECOMMIT_LIMIT_KB * 1024:
            problems.append(f"{relative}: over {PRECOMMIT_LIMIT_KB} KB")
        if path.suffix not in TEXT_SUFFIXES:
            continue
        text = path.read_text()
        if text and not text.endswith("\n") or text.endswith("\n\n"):
            problems.append(f"{relative}: does not end with exactly one newline")
        if any(line != line.rstrip() for line in text.splitlines()):
            problems.append(f"{relative}: trailing whitespace")
        if "\r" in text:
            problems.append(f"{relative}: CR line endings")
        if path.suffix == ".json" and text != json.dumps(json.loads(text), indent=4) + "\n":
            problems.append(f"{relative}: not pretty JSON (indent 4, keys in their order)")
        if path.suffix in (".yml", ".yaml"):
            yaml.safe_load(text)
        if path.suffix == ".py" and docstring_problem(text):
            problems.append(f"{relative}: {docstring_problem(text)}")
        if os.access(path, os.X_OK) and not text.startswith("#!"):
            problems.append(f"{relative}: executable without a shebang")
        if "PRIVATE KEY-----" in text:
            problems.append(f"{relative}: holds a private key")
    if problems:
        raise CheckFailed("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


def check_properties(bundle: Path) -> None:
    import numpy as np
    from monai.bundle import ConfigWorkflow
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        # the inference workflow plans its cases from its input: one small image stands for the user's
        image = Path(tmp) / "case.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(image)
        workflow = ConfigWorkflow(
            workflow_type="inference",
            config_file=str(bundle / "configs" / "inference.json"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=str(bundle / "configs" / "logging.conf"),
            bundle_root=str(bundle),
            input=str(image),
            output_dir=str(Path(tmp) / "outputs"),
            device="cpu",
        )
        workflow.initialize()
        missing = workflow.check_properties()
    if missing:
        raise CheckFailed(f"inference workflow lacks properties {missing}")


def check_net_in_out(bundle: Path) -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
        device="cpu",
    )


def check_torchscript(bundle: Path) -> None:
    import torch
    from monai.bundle import ckpt_export

    card = (bundle / "docs" / "README.md").read_text()
    if "torch.jit.script" not in card:
        raise CheckFailed("docs/README.md does not say that scripting (torch.jit.script) is not supported")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    size = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    filepath = bundle / "models" / "verify_model.ts"
    try:
        ckpt_export(
            net_id="network_def",
            filepath=str(filepath),
            ckpt_file=str(bundle / "models" / "model.pt"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(bundle / "configs" / "inference.json"),
            bundle_root=str(bundle),
            device="cpu",
            use_trace=True,
            input_shape=[1, 3, *size],
        )
        torch.jit.load(str(filepath))
    finally:
        filepath.unlink(missing_ok=True)


MIN_CHECKS = {
    "necessary files": check_necessary_files,
    "preferred files": check_preferred_files,
    "large files": check_large_files,
    "version and changelog": check_version_changelog,
    "metadata schema": check_metadata_schema,
    "config keys": check_config_keys,
    "pre-commit formatting": check_precommit_formatting,
}
FULL_CHECKS = {
    "inference properties": check_properties,
    "verify_net_in_out": check_net_in_out,
    "torchscript (traced export; scripting opted out)": check_torchscript,
}


def run_checks(bundle: Path, full: bool) -> dict[str, str | None]:
    """{check: None when it passed, else why it failed}."""
    results = {}
    for name, check in {**MIN_CHECKS, **(FULL_CHECKS if full else {})}.items():
        try:
            check(bundle)
            results[name] = None
        except Exception as error:  # a check that crashes has failed; its reason is what is reported
            results[name] = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if os.environ.get("MEDICLIP_TRACEBACK"):
                traceback.print_exc()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="the bundle folder (DIR/mediclip_anomaly_detection)")
    parser.add_argument("--full", action="store_true", help="also the checks of the zoo CI's full mode")
    args = parser.parse_args(argv)
    bundle = args.bundle.resolve()
    if not (bundle / "configs").is_dir():
        print(f"error: {args.bundle}: not a bundle folder (no configs/)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(bundle))  # as the zoo's verify_bundle.py: the bundle's own code comes first
    results = run_checks(bundle, args.full)
    for name, failure in results.items():
        print(f"PASS {name}" if failure is None else f"FAIL {name}: {failure}")
    return int(any(failure is not None for failure in results.values()))


if __name__ == "__main__":
    sys.exit(main())
