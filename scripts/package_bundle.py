#!/usr/bin/env python
"""Write the bundle as the MONAI model zoo takes it: one self-contained folder, no unpublished package needed.

    python scripts/package_bundle.py --output DIR [--model PATH/model.pt] [--model_url URL] [--metrics FILE] [--zip]

``DIR/mediclip_anomaly_detection/`` gets every config of bundle/configs (formatted as the zoo's pre-commit
wants), the model card and data licence (bundle/docs), the repository's LICENSE, ``large_files.yml`` (where
model.pt is downloaded from, with its md5 when --model is given), models/model.pt when given, and under
``scripts/`` the ``mediclip_monai`` package the configs use: each config that lists ``imports`` gets
``$import scripts`` first, which puts that copy on ``sys.path``. A model.pt of an earlier version (or a
resume checkpoint) is written as the current version writes it. The folder runs from inside it
(``python -m monai.bundle run --config_file configs/inference.json``) and zips into what
``monai.bundle download`` fetches (``--zip``: ``DIR/mediclip_anomaly_detection_v<version>.zip``). ``--metrics``
takes the metrics.json of configs/evaluate.json run on that model.pt: its figures become metadata.json's
``eval_metrics``. An existing package folder is replaced only once the new one is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "mediclip_anomaly_detection"
# The zoo keeps no file over 25 MB in its repository: bigger ones are downloaded (large_files.yml).
ZOO_FILE_LIMIT = 25 * 2**20
MODEL_URL_PLACEHOLDER = "https://REPLACE-WITH-WHERE-MODEL-PT-IS-PUBLISHED/mediclip_anomaly_detection_model.pt"
SCRIPTS_INIT = '''"""The MediCLIP code of this bundle: the mediclip_monai package beside this file.

The configs import this package first (``$import scripts``); it makes that copy importable, so the bundle
needs no package beyond the ones metadata.json lists.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
'''


class PackagingError(Exception):
    """A bad argument; the message names it."""


def zoo_json(data) -> str:
    """JSON as the zoo's pre-commit ``pretty-format-json --no-sort-keys --indent=4`` writes it."""
    return json.dumps(data, indent=4) + "\n"


def packaged_config(text: str) -> str:
    """A config of bundle/configs as the zoo folder holds it: ``$import scripts`` first in its ``imports``."""
    config = json.loads(text)
    imports = config.get("imports") if isinstance(config, dict) else None
    if isinstance(imports, list) and "$import scripts" not in imports:
        config["imports"] = ["$import scripts", *imports]
    return zoo_json(config)


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def large_files_yml(model: Path | None, url: str) -> str:
    """large_files.yml: where models/model.pt is downloaded from, and its md5 when the bundle holds it."""
    lines = ["large_files:", '  - path: "models/model.pt"', f'    url: "{url}"']
    if model is not None:
        lines += [f'    hash_val: "{md5(model)}"', '    hash_type: "md5"']
    return "\n".join(lines) + "\n"


def write_model(model: Path, target: Path) -> None:
    """model.pt as the current version writes it (the network state alone, its extra state a tensor), so that
    ``monai.bundle.load`` reads it; a resume checkpoint or a model.pt of an earlier version is converted."""
    import torch

    from mediclip_monai.networks import CheckpointError, read_model_state
    from mediclip_monai.networks.extra_state import EXTRA_STATE_KEY, encode_extra_state

    try:
        state = read_model_state(str(model))
    except CheckpointError as error:
        raise PackagingError(f"--model: {error}") from None
    torch.save({**state, EXTRA_STATE_KEY: encode_extra_state(state[EXTRA_STATE_KEY])}, target)


def copy_package(target: Path) -> None:
    """The mediclip_monai package (sources and its model configs) under ``target``, without caches."""
    shutil.copytree(
        REPO / "mediclip_monai", target / "mediclip_monai", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    (target / "__init__.py").write_text(SCRIPTS_INIT)


def eval_metrics(metrics: Path) -> dict:
    """The figures of an evaluation's metrics.json (image AUROC, pixel AUROC, ...) for metadata.json."""
    try:
        report = json.loads(metrics.read_text())
    except (OSError, ValueError) as error:
        raise PackagingError(f"--metrics: {metrics}: not readable as JSON ({error})") from None
    figures = {
        name: value
        for name, value in report.items()
        if isinstance(value, float) and name not in ("threshold", "image_threshold")
    }
    if not figures:
        raise PackagingError(f"--metrics: {metrics}: holds no figures (the metrics.json of configs/evaluate.json)")
    return figures


def write_bundle(folder: Path, model: Path | None, model_url: str, metrics: dict | None = None) -> None:
    """Every file of the zoo bundle into the empty ``folder``."""
    configs = folder / "configs"
    configs.mkdir(parents=True)
    for source in sorted((REPO / "bundle" / "configs").iterdir()):
        if source.is_file():
            text = source.read_text()
            (configs / source.name).write_text(packaged_config(text) if source.suffix == ".json" else text)
    if metrics is not None:
        metadata = json.loads((configs / "metadata.json").read_text())
        (configs / "metadata.json").write_text(zoo_json({**metadata, "eval_metrics": metrics}))
    shutil.copytree(REPO / "bundle" / "docs", folder / "docs")
    shutil.copy(REPO / "LICENSE", folder / "LICENSE")
    copy_package(folder / "scripts")
    packaged_model = None
    if model is not None:
        (folder / "models").mkdir()
        packaged_model = folder / "models" / "model.pt"
        write_model(model, packaged_model)
    (folder / "large_files.yml").write_text(large_files_yml(packaged_model, model_url))


def package(
    output: Path,
    model: Path | None = None,
    model_url: str = MODEL_URL_PLACEHOLDER,
    metrics: Path | None = None,
    zip_it: bool = False,
) -> Path:
    """Write ``output/mediclip_anomaly_detection`` (replacing one there once the new one is complete) and, with
    ``zip_it``, its zip beside it.

    Raises:
        PackagingError: ``model`` is not a MediCLIP model.pt, ``metrics`` not an evaluation's metrics.json, or
            ``output`` is not a folder.
    """
    if model is not None and not model.is_file():
        raise PackagingError(f"--model: {model}: no such file")
    if output.exists() and not output.is_dir():
        raise PackagingError(f"--output: {output}: not a folder")
    figures = eval_metrics(metrics) if metrics is not None else None
    output.mkdir(parents=True, exist_ok=True)
    target = output / BUNDLE_NAME
    with tempfile.TemporaryDirectory(dir=output, prefix=f".{BUNDLE_NAME}.tmp-") as tmp:
        staged = Path(tmp) / BUNDLE_NAME
        write_bundle(staged, model, model_url, figures)
        if zip_it:
            version = json.loads((staged / "configs" / "metadata.json").read_text())["version"]
            archive = shutil.make_archive(str(Path(tmp) / f"{BUNDLE_NAME}_v{version}"), "zip", tmp, BUNDLE_NAME)
            os.replace(archive, output / Path(archive).name)
        if target.exists():
            target.rename(Path(tmp) / "previous")
        staged.rename(target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help=f"folder to write {BUNDLE_NAME}/ into")
    parser.add_argument("--model", type=Path, default=None, help="a trained model.pt to ship in models/")
    parser.add_argument(
        "--model_url", default=MODEL_URL_PLACEHOLDER, help="where model.pt is published (large_files.yml)"
    )
    parser.add_argument("--metrics", type=Path, default=None, help="metrics.json of evaluate.json on that model")
    parser.add_argument("--zip", action="store_true", help="also write the zip that monai.bundle download fetches")
    args = parser.parse_args(argv)
    try:
        target = package(args.output, args.model, args.model_url, args.metrics, args.zip)
    except PackagingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"zoo bundle written to {target}")
    if args.model is not None and os.path.getsize(args.model) > ZOO_FILE_LIMIT:
        print(
            f"models/model.pt is over the zoo's 25 MB per file: publish it at the url of {target / 'large_files.yml'} "
            "and leave it out of the zoo pull request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
