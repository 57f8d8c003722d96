"""The bundle as the MONAI model zoo takes it: scripts/package_bundle.py writes it, the zoo's offline checks
pass on it, and it trains, infers, evaluates (one process and two with torchrun on gloo), checks its network,
exports and loads through ``monai.bundle.load``, from inside its folder and from elsewhere, with no
mediclip_monai but its own copy (no PYTHONPATH to this checkout)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import download

from .conftest import REPO, cli

BUNDLE_NAME = "mediclip_anomaly_detection"
PACKAGE = os.path.join(REPO, "scripts", "package_bundle.py")
CHECKS = os.path.join(REPO, "scripts", "zoo_checks.py")
TINY = ["--clip_model", "mediclip-tiny", "--clip_pretrained", "none"]
ZOO_CHECKS = [
    "necessary files",
    "preferred files",
    "large files",
    "version and changelog",
    "metadata schema",
    "config keys",
    "pre-commit formatting",
]
FULL_CHECKS = ["inference properties", "verify_net_in_out", "torchscript (traced export; scripting opted out)"]


def as_zoo_user(args, cwd, extra_env=None, timeout=600):
    """``args`` run in ``cwd`` with nothing of this checkout on PYTHONPATH (``extra_env`` added); must succeed."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, *args] if args[0] in ("-m", "-c") else args
    result = subprocess.run(
        command, cwd=cwd, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def packaged(trained, tmp_path_factory):
    """The zoo folder with the tiny trained model.pt, and its zip; (folder, zip). Its tests are slow: training."""
    output = tmp_path_factory.mktemp("zoo")
    result = cli([sys.executable, PACKAGE, "--output", str(output), "--model", f"{trained}/model.pt", "--zip"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f"zoo bundle written to {output / BUNDLE_NAME}")
    return output / BUNDLE_NAME, output / f"{BUNDLE_NAME}_v0.1.0.zip"


@pytest.fixture()
def bundle(packaged, tmp_path):
    """A fresh copy of the packaged folder for a test that writes into it."""
    copy = tmp_path / BUNDLE_NAME
    shutil.copytree(packaged[0], copy)
    return copy


@pytest.mark.slow
def test_the_package_holds_what_the_zoo_asks_and_its_own_code(packaged):
    folder, _ = packaged
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    expected = {"LICENSE", "large_files.yml", "docs/README.md", "docs/data_license.txt", "models/model.pt"}
    configs = {f"configs/{name}" for name in os.listdir(os.path.join(REPO, "bundle", "configs"))}
    assert expected | configs | {"scripts/__init__.py", "scripts/mediclip_monai/__init__.py"} <= files
    for name in ("inference.json", "train.json"):
        assert json.loads((folder / "configs" / name).read_text())["imports"][0] == "$import scripts"
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    assert "mediclip-monai" not in metadata["required_packages_version"]
    large = (folder / "large_files.yml").read_text()
    assert f'hash_val: "{hashlib.md5((folder / "models" / "model.pt").read_bytes()).hexdigest()}"' in large


@pytest.mark.slow
def test_the_zoo_checks_pass_on_the_packaged_bundle(packaged, tmp_path):
    result = as_zoo_user([sys.executable, CHECKS, str(packaged[0]), "--full"], tmp_path)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert lines == [f"PASS {name}" for name in ZOO_CHECKS + FULL_CHECKS]
    assert not (packaged[0] / "models" / "verify_model.ts").exists()


@pytest.mark.slow
def test_the_zoo_checks_fail_on_what_the_zoo_refuses(bundle, tmp_path):
    (bundle / "LICENSE").unlink()
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["changelog"] = {"0.0.9": "an older version"}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))  # not pretty: pre-commit refuses
    large = bundle / "large_files.yml"
    large.write_text(large.read_text().replace('hash_val: "', 'hash_val: "0'))  # another md5
    result = cli([sys.executable, CHECKS, str(bundle)], cwd=tmp_path)
    assert result.returncode == 1
    failed = {line[5:].split(":")[0] for line in result.stdout.splitlines() if line.startswith("FAIL ")}
    assert failed == {"necessary files", "version and changelog", "pre-commit formatting", "large files"}


def small_test_set(demo_dir, folder: Path) -> str:
    """A datalist of two demo test cases (one normal, one abnormal) for a quick evaluation; its path."""
    cases = json.loads(Path(demo_dir, "datalist.json").read_text())["test"][:2]
    for case in cases:
        for key in ("image", "label"):
            (folder / case[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(demo_dir, case[key]), folder / case[key])
    (folder / "datalist.json").write_text(json.dumps({"test": cases}))
    return str(folder / "datalist.json")


# What the zoo's unit-test runner does for a bundle (its test_<bundle>.py): each workflow in-process through
# MONAI's ConfigWorkflow with the test's overrides, its properties checked, initialize, run, finalize. Then the
# CONTRIBUTING command verify_net_in_out as run from the bundle folder (no bundle_root given) and
# monai.bundle.load of what was trained, against the network inference rebuilds from that model.pt.
ZOO_RUNNER = """
import json, os, sys
import torch
from monai.bundle import ConfigWorkflow, load, verify_net_in_out

bundle, demo_dir, case, test_set = sys.argv[1:]
sys.path.insert(0, bundle)
tiny = {"clip_model": "mediclip-tiny", "clip_pretrained": "none", "device": "cpu", "num_workers": 0}
small = {"epochs": 1, "k_shot": 4, "batch_size": 4, "dataset_dir": demo_dir}

def check_workflow(workflow_type, config_file, **override):
    workflow = ConfigWorkflow(
        workflow_type=workflow_type, config_file=config_file, meta_file="configs/metadata.json",
        logging_file="configs/logging.conf", **override
    )
    workflow.initialize()
    assert not workflow.check_properties(), workflow.check_properties()
    workflow.run()
    workflow.finalize()

check_workflow("train", "configs/train.json", **tiny, **small)
check_workflow("infer", "configs/inference.json", input=case, device="cpu", num_workers=0)
layers = ["configs/inference.json", "configs/evaluate.json"]
check_workflow("infer", layers, datalist=test_set, device="cpu", num_workers=0)
verify_net_in_out(
    net_id="network_def", meta_file="configs/metadata.json", config_file="configs/inference.json", device="cpu"
)

parent, name = os.path.split(bundle)
network = load(name, bundle_dir=parent, workflow_type="inference", device="cpu")
import mediclip_monai  # the bundle's own copy, which its configs imported
from mediclip_monai.networks import load_mediclip

reference = load_mediclip("models/model.pt")
images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    difference = float((network(images) - reference(images)).abs().max())
print(mediclip_monai.__file__)
print(network.decisions.calibrated, network.memory_bank.size, network.anomaly_branch, difference)
"""


@pytest.mark.slow
def test_the_zoo_unit_tests_train_infer_evaluate_check_and_load_from_inside_the_folder(bundle, demo_dir, tmp_path):
    case = f"{demo_dir}/test/brain_test_001.nii.gz"
    test_set = small_test_set(demo_dir, tmp_path / "data")
    result = as_zoo_user(["-c", ZOO_RUNNER, str(bundle), demo_dir, case, test_set], bundle)
    # everything went where the bundle's configs say, inside the folder
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "runs" / "tensorboard").is_dir()
    assert (bundle / "outputs" / "brain_test_001" / "brain_test_001_anomaly_map.nii.gz").is_file()
    assert json.loads((bundle / "runs" / "eval" / "metrics.json").read_text())["n_cases"] == 2
    assert "data shape of network is verified with no error" in result.stdout + result.stderr
    module, figures = result.stdout.strip().splitlines()[-2:]
    assert module == str(bundle / "scripts" / "mediclip_monai" / "__init__.py")
    calibrated, bank, branch, difference = figures.split()
    assert calibrated == "True" and int(bank) > 0 and branch == "fused" and float(difference) == 0.0


@pytest.mark.slow
def test_two_processes_with_torchrun_on_gloo_from_elsewhere_with_bundle_root(bundle, demo_dir, tmp_path):
    # as the zoo's CI runs its multi-GPU tests: the bundle folder on PYTHONPATH, bundle_root given
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    test_set = small_test_set(demo_dir, tmp_path / "data")
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    configs, common = bundle / "configs", ["--bundle_root", str(bundle), "--num_workers", "0"]
    train = f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']"
    small = ["--epochs", "1", "--k_shot", "4", "--batch_size", "4", "--dataset_dir", demo_dir]
    run = [*torchrun, "-m", "monai.bundle", "run"]
    on_path = {"PYTHONPATH": str(bundle)}
    as_zoo_user([*run, "training", "--config_file", train, *TINY, *small, *common], elsewhere, on_path)
    assert (bundle / "models" / "model.pt").is_file()
    layers = ("inference.json", "evaluate.json", "multi_gpu_inference.json")
    evaluate = "[" + ",".join(f"'{configs / name}'" for name in layers) + "]"
    as_zoo_user([*run, "--config_file", evaluate, "--datalist", test_set, *common], elsewhere, on_path)
    assert json.loads((bundle / "runs" / "eval" / "metrics.json").read_text())["n_cases"] == 2
    assert os.listdir(elsewhere) == []


@pytest.mark.slow
def test_the_zip_is_what_monai_bundle_download_fetches(packaged, tmp_path):
    folder, archive = packaged
    download(name=BUNDLE_NAME, bundle_dir=str(tmp_path), url=archive.as_uri())
    fetched = tmp_path / BUNDLE_NAME

    def files(root: Path):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    assert files(fetched) == files(folder)
    assert (fetched / "models" / "model.pt").read_bytes() == (folder / "models" / "model.pt").read_bytes()


def test_bad_arguments_are_named(tmp_path):
    result = cli([sys.executable, PACKAGE, "--output", str(tmp_path), "--model", str(tmp_path / "absent.pt")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: --model: {tmp_path / 'absent.pt'}: no such file"
    (tmp_path / "metrics.json").write_text("{}")
    result = cli([sys.executable, PACKAGE, "--output", str(tmp_path), "--metrics", str(tmp_path / "metrics.json")])
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --metrics: {tmp_path / 'metrics.json'}: holds no")
    assert not (tmp_path / BUNDLE_NAME).exists()


def test_the_figures_of_an_evaluation_become_eval_metrics(tmp_path):
    report = {"n_cases": 21, "image_auroc": 0.75, "pixel_auroc": 0.8125, "threshold": 0.5, "anomaly_branch": "fused"}
    (tmp_path / "metrics.json").write_text(json.dumps(report))
    result = cli([sys.executable, PACKAGE, "--output", str(tmp_path), "--metrics", str(tmp_path / "metrics.json")])
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = json.loads((tmp_path / BUNDLE_NAME / "configs" / "metadata.json").read_text())
    assert metadata["eval_metrics"] == {"image_auroc": 0.75, "pixel_auroc": 0.8125}
