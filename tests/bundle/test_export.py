"""The model card's export commands (MONAI's own ``ckpt_export`` and ``onnx_export``) on a tiny trained model.

The exported networks give the PyTorch network's probabilities at batch 1 and 2 (one export serves any
batch size), and hold the text features as a constant: the prompts are no part of the exported graph.
"""

import os
import re
import shlex
from pathlib import Path

import numpy as np
import onnx  # the test extra installs the export extra's packages
import onnxruntime
import pytest
import torch

from mediclip_monai.networks import load_mediclip

from .conftest import REPO, cli

pytestmark = pytest.mark.slow

CARD = (Path(REPO) / "bundle" / "docs" / "README.md").read_text()
TOLERANCE = 1e-4


def documented_command(command, filepath, ckpt_dir, env=None):
    """The card's ``python -m monai.bundle <command>`` line, with DIR and the output file filled in; run it from
    the bundle folder, as the card says."""
    blocks = re.findall(r"^```bash\n(.*?)^```", CARD, flags=re.S | re.M)
    (block,) = [b for b in blocks if f"-m monai.bundle {command} " in b]
    args = shlex.split(block.replace("\\\n", " "))
    assert args[:2] == ["python", "-m"]
    args = [a.replace("DIR", ckpt_dir) for a in args[1:]]
    args[args.index("--filepath") + 1] = str(filepath)
    return cli(args, env=env, cwd=os.path.join(REPO, "bundle"))


@pytest.fixture(scope="module")
def network(trained):
    return load_mediclip(os.path.join(trained, "model.pt"))


def images(batch):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))


def test_torchscript_export_matches_the_network(trained, network, tmp_path):
    filepath = tmp_path / "model.ts"
    result = documented_command("ckpt_export", filepath, trained)
    assert result.returncode == 0, result.stderr[-3000:]

    extra = {"metadata.json": "", "inference.json": ""}
    exported = torch.jit.load(str(filepath), _extra_files=extra)
    assert b'"network_data_format"' in extra["metadata.json"] and b'"network_def"' in extra["inference.json"]
    for batch in (1, 2):
        x = images(batch)
        with torch.no_grad():
            expected, got = network(x), exported(x)
        assert got.shape == (batch, 2, 224, 224)
        assert float((got - expected).abs().max()) < TOLERANCE

    # Baked in: changing the exported module's prompt contexts changes nothing, as the text tower is not run.
    with torch.no_grad():
        before = exported(images(1))
        exported.prompts.context.add_(1.0)
        torch.testing.assert_close(exported(images(1)), before, rtol=0, atol=0)


def test_onnx_export_matches_the_network_at_any_batch_size(trained, network, tmp_path):
    filepath = tmp_path / "model.onnx"
    result = documented_command("onnx_export", filepath, trained)
    assert result.returncode == 0, result.stderr[-3000:]

    model = onnx.load(str(filepath))
    graph_io = (*model.graph.input, *model.graph.output)
    assert [value.type.tensor_type.shape.dim[0].dim_param for value in graph_io] == ["batch", "batch"]
    session = onnxruntime.InferenceSession(str(filepath), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for batch in (1, 2):
        x = images(batch)
        with torch.no_grad():
            expected = network(x).numpy()
        (got,) = session.run(["pred"], {"image": x.numpy()})
        assert got.shape == (batch, 2, 224, 224)
        assert float(np.abs(got - expected).max()) < TOLERANCE

    # Baked in: the graph holds the text features as a constant, and none of the prompts or the text tower.
    names = [i.name for i in model.graph.initializer]
    assert not [n for n in names if n.startswith("prompts.") or "token_embedding" in n]
    text = network.text_features().detach().numpy()
    constants = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if tuple(i.dims) == text.shape]
    assert any(np.allclose(c, text, atol=1e-6) for c in constants)


def test_onnx_export_without_the_export_extra_says_how_to_install_it(trained, tmp_path):
    # onnxscript as it looks when it is not installed (torch.onnx imports it before anything is exported)
    blocked = tmp_path / "blocked" / "onnxscript"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError('No module named onnxscript', name='onnxscript')\n")
    pythonpath = os.pathsep.join([str(blocked.parent), REPO, os.environ.get("PYTHONPATH", "")])
    filepath = tmp_path / "model.onnx"
    result = documented_command("onnx_export", filepath, trained, env={"PYTHONPATH": pythonpath})
    assert result.returncode != 0 and not filepath.exists()
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last == (
        "error: ONNX export needs the package 'onnxscript', which is not installed: pip install -e \".[export]\""
    )
