"""The MediCLIP network: frozen CLIP + per-layer adapters + learnable state prompts -> anomaly map.

MediCLIP (MICCAI 2024, arXiv 2405.11315). Patch tokens tapped from three ViT blocks go through a 1x1
convolution each (ViT width -> text width), are L2-normalised per patch and compared with the normal and
abnormal prompt embeddings. The per-layer logits are averaged, upsampled bilinearly (align_corners=True)
to the input size and turned into probabilities by a softmax without temperature.

Beyond the paper, two more anomaly branches come from the same backbone pass: ``memory_bank``, the shots'
patch tokens scored by nearest neighbour (`PatchMemoryBank`, built after training), and ``fused``, both maps
normalised on the normal validation slices, combined and mapped back to [0, 1]
(`mediclip_monai.decisions.calibration`). ``anomaly_branch`` selects what ``forward`` returns; ``mediclip``
computes exactly the paper's map, as before. The same pass also gives image-level signals (`global_signals`:
the image's global descriptors against the shots', `ShotEmbeddings`, and against the learned prompts), which
`mediclip_monai.decisions.image_level` combines with a map into the scan's score. What the maps mean
(thresholds, image score, default branch) is the network's `Decisions`.

The module knows nothing about files, configs or engines. Its state dict is exactly what model.pt holds:
the adapters, the prompt contexts, the buffers of the memory bank and of the shot embeddings (empty until
built) and, as extra state (JSON text in a tensor, `mediclip_monai.networks.extra_state`), the identity of
the frozen backbone (model name, taps, a fingerprint of its weights) and the decisions' calibration (None
until calibrated). The backbone itself is rebuilt, never saved: it is left out of ``state_dict()`` and of
strict ``load_state_dict()``, so MONAI's CheckpointSaver/CheckpointLoader, ``monai.bundle ckpt_export`` and
``monai.bundle.load`` work on the network as it is.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..decisions import BRANCHES, CALIBRATE_COMMAND, Decisions
from ..decisions.calibration import fused_map
from ..errors import MediclipError
from .backbone import Backbone, ImageTokens, InputContract
from .clip_backbone import ClipBackbone
from .extra_state import decode_extra_state, encode_extra_state
from .memory_bank import PatchMemoryBank
from .prompts import PromptLearner
from .shot_embeddings import ShotEmbeddings

logger = logging.getLogger(__name__)

# 5: the shots' global descriptors; 4: the extra state as a tensor (`extra_state`); 3: memory bank and
# calibration. Formats 2 (neither) to 4 still load.
CHECKPOINT_FORMAT = 5
BACKBONE_PREFIX = "backbone."
MEMORY_BANK_KEY = "memory_bank.patches"
SHOT_EMBEDDINGS_KEYS = ("shot_embeddings.class_tokens", "shot_embeddings.embeddings")
# What must match between a checkpoint and the network it is loaded into: the architecture and taps.
ARCHITECTURE_KEYS = ("clip_model", "feature_layers", "causal_text_mask")


class CheckpointMismatchError(MediclipError, ValueError):
    """A checkpoint was trained on another backbone (architecture, taps or weights) than this network."""


class BranchUnavailableError(MediclipError, ValueError):
    """An anomaly branch was asked of a network that lacks what it needs (memory bank or calibration)."""


class MediCLIP(nn.Module):
    """MediCLIP anomaly segmentation network.

    Args:
        clip_model: open_clip model name (``ViT-L-14`` as the paper; ``mediclip-tiny`` for tests).
        clip_pretrained: open_clip pretrained tag (``openai``) or ``none`` for random weights.
        clip_checkpoint: local CLIP weights file; when given nothing is downloaded.
        feature_layers: 1-indexed ViT blocks to tap; None taps 1/2, 3/4 and all of the depth.
        causal_text_mask: use CLIP's causal mask in the text transformer (the reference does not).
        anomaly_branch: the map ``forward`` returns, one of `BRANCHES`; None: the decisions' default branch
            (``fused`` once calibrated, ``mediclip`` while uncalibrated).
        backbone: another implementation of `Backbone` (a timm or Hugging Face tower) to use instead of the
            open_clip one that ``clip_model``, ``clip_pretrained``, ``clip_checkpoint`` and ``feature_layers``
            describe; ``clip_model`` then names it in the checkpoint's identity.

    Input: B x 3 x S x S images normalised as ``input_contract`` says (S = the backbone's input size).
    Output: B x 2 x S x S; channel 1 the anomaly map of ``anomaly_branch``, channel 0 its complement
    (``mediclip``: the paper's softmax probabilities, normal then anomaly; ``fused``: in [0, 1];
    ``memory_bank``: 1 - cosine similarity, in [0, 2], about [0, 1] in practice).

    ``memory_bank`` (a `PatchMemoryBank`), ``shot_embeddings`` (`ShotEmbeddings`) and ``decisions``
    (`Decisions`, fitted by `mediclip_monai.decisions.calibration.calibrate`) are filled after training by
    `mediclip_monai.workflows.calibrate.calibrate_model`; all are saved in the state dict.
    """

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        clip_checkpoint: str | None = None,
        feature_layers: list[int] | None = None,
        causal_text_mask: bool = False,
        anomaly_branch: str | None = None,
        backbone: Backbone | None = None,
    ) -> None:
        super().__init__()
        if backbone is None:
            backbone = ClipBackbone(clip_model, clip_pretrained, clip_checkpoint, feature_layers)
        self.backbone = backbone
        self.adapters = nn.ModuleList(
            nn.Conv2d(self.backbone.vision_width, self.backbone.embed_dim, kernel_size=1, bias=True)
            for _ in self.backbone.feature_layers
        )
        self.prompts = PromptLearner(self.backbone, causal_text_mask)
        self.memory_bank = PatchMemoryBank()
        self.shot_embeddings = ShotEmbeddings()
        self.decisions = Decisions()
        self.anomaly_branch = anomaly_branch
        self._identity = {
            "clip_model": clip_model,
            "clip_pretrained": clip_pretrained or "none",
            "clip_checkpoint": _file_name(clip_checkpoint),
            "feature_layers": list(self.backbone.feature_layers),
            "causal_text_mask": bool(causal_text_mask),
        }
        self.register_state_dict_post_hook(_drop_backbone_entries)
        self.register_load_state_dict_post_hook(_ignore_missing_backbone_entries)
        # Every rank builds the same frozen backbone (the fingerprint proves it): DDP need not broadcast it.
        # The memory bank is built on rank 0 after training: nothing to keep in step either.
        self._ddp_params_and_buffers_to_ignore = (
            [BACKBONE_PREFIX + name for name, _ in self.backbone.named_parameters()]
            + [BACKBONE_PREFIX + name for name, _ in self.backbone.named_buffers()]
            + [MEMORY_BANK_KEY, *SHOT_EMBEDDINGS_KEYS]
        )

    @property
    def identity(self) -> dict:
        """Which backbone this network runs: model name, weights source, taps, weights fingerprint."""
        return {**self._identity, "backbone_fingerprint": self.backbone.fingerprint}

    @property
    def input_contract(self) -> InputContract:
        """What the network takes as input: the backbone's contract (size, mean, std, interpolation)."""
        return self.backbone.input_contract

    @property
    def anomaly_branch(self) -> str:
        """The branch ``forward`` returns: the one set, else the calibrated default, else ``mediclip``."""
        return self._anomaly_branch or self.default_branch

    @anomaly_branch.setter
    def anomaly_branch(self, branch: str | None) -> None:
        if branch is not None and branch not in BRANCHES:
            raise ValueError(f"anomaly_branch must be one of {', '.join(BRANCHES)} or null, got {branch!r}")
        self._anomaly_branch = branch

    @property
    def default_branch(self) -> str:
        """The branch the model's decisions recommend: ``fused`` once calibrated, ``mediclip`` before."""
        return self.decisions.default_branch

    @property
    def available_branches(self) -> tuple[str, ...]:
        """The branches this network can compute now: ``mediclip`` always; the others once bank/calibration exist."""
        return tuple(branch for branch in BRANCHES if self._missing_for(branch) is None)

    def _missing_for(self, branch: str) -> str | None:
        if branch == "mediclip":
            return None
        missing = [] if self.memory_bank.is_built else ["memory bank"]
        if branch == "fused" and not self.decisions.calibrated:
            missing.append("calibration")
        return " and ".join(missing) or None

    def require_branch(self, branch: str) -> None:
        """Raise `BranchUnavailableError` naming what to run when ``branch`` cannot be computed by this network."""
        if branch not in BRANCHES:
            raise ValueError(f"unknown anomaly branch {branch!r}; one of {', '.join(BRANCHES)}")
        missing = self._missing_for(branch)
        if missing:
            raise BranchUnavailableError(
                f"anomaly_branch '{branch}' needs a {missing}, which this model has not (not calibrated after "
                f"training, or made by an older version); add it to model.pt with: {CALIBRATE_COMMAND}"
            )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What fine-tuning updates: the adapters and the prompt contexts (the backbone stays frozen)."""
        return list(self.adapters.parameters()) + list(self.prompts.parameters())

    def text_features(self) -> torch.Tensor:
        """text_dim x 2 normalised class embeddings (normal, abnormal)."""
        return self.prompts.text_features()

    def patch_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The one backbone pass: tapped patch tokens, each B x vision_width x h x w (no gradient)."""
        return self.backbone.patch_tokens(images)

    def image_tokens(self, images: torch.Tensor) -> ImageTokens:
        """The one backbone pass with the global descriptors too: the patch tokens of :meth:`patch_tokens`
        (the same values), the tapped blocks' class tokens and CLIP's image embedding."""
        return self.backbone.image_tokens(images)

    def global_signals(self, tokens: ImageTokens) -> dict[str, torch.Tensor]:
        """Image-level anomaly signals of a batch (B float32 values each; higher: more anomalous).

        ``embedding_knn`` and ``class_token_knn``: distances to the shots' descriptors (`ShotEmbeddings`, built
        with the memory bank); ``image_text``: the image embedding's cosine similarity to the learned
        "abnormal" prompt embedding minus that to the "normal" one (CLIP's zero-shot score, with the prompts
        MediCLIP learned for its patches).
        """
        signals = self.shot_embeddings.distances(tokens.class_tokens, tokens.embedding)
        with torch.autocast(tokens.embedding.device.type, enabled=False):
            text = self.text_features().float()
            embedding = F.normalize(tokens.embedding.float(), dim=-1)
            signals["image_text"] = embedding @ (text[:, 1] - text[:, 0])
        return signals

    def mediclip_logits(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """B x 2 x h x w (normal, abnormal) logits on the patch grid, averaged over the tapped layers."""
        text = self.text_features()
        logits = 0
        for adapter, layer_tokens in zip(self.adapters, tokens):
            if not torch.is_autocast_enabled(layer_tokens.device.type):
                # tokens computed under autocast (the token cache, calibration) meet float32 adapters here
                layer_tokens = layer_tokens.to(adapter.weight.dtype)
            patches = F.normalize(adapter(layer_tokens).permute(0, 2, 3, 1), dim=-1)
            logits = logits + patches @ text.to(patches.dtype)
        return (logits / len(tokens)).permute(0, 3, 1, 2)

    def probabilities_from_tokens(self, tokens: list[torch.Tensor], output_size) -> torch.Tensor:
        """B x 2 x output_size softmax probabilities from tapped tokens (see :meth:`patch_tokens`)."""
        logits = self.mediclip_logits(tokens)
        logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=True)
        return logits.softmax(dim=1, dtype=torch.float32)

    def anomaly_maps_from_tokens(
        self, tokens: list[torch.Tensor], output_size, branches: tuple[str, ...] | None = None
    ) -> dict[str, torch.Tensor]:
        """B x output_size anomaly maps of several branches from one backbone pass (see :meth:`patch_tokens`).

        Args:
            tokens: the tapped patch tokens of the images.
            output_size: (height, width) of the maps.
            branches: which to compute; None: every one in `available_branches`.

        Returns:
            {branch: B x H x W map}: ``mediclip`` is channel 1 of :meth:`probabilities_from_tokens`,
            ``memory_bank`` the bank's upsampled nearest-neighbour score, ``fused`` the calibrated
            combination of both (`mediclip_monai.decisions.calibration.fused_map`).
        """
        branches = self.available_branches if branches is None else tuple(branches)
        for branch in branches:
            self.require_branch(branch)
        maps = {}
        if "mediclip" in branches or "fused" in branches:
            maps["mediclip"] = self.probabilities_from_tokens(tokens, output_size)[:, 1]
        if "memory_bank" in branches or "fused" in branches:
            maps["memory_bank"] = self.memory_bank.anomaly_map(tokens, output_size)
        if "fused" in branches:
            maps["fused"] = fused_map(maps["mediclip"], maps["memory_bank"], self.decisions.fusion)
        return {branch: maps[branch].float() for branch in branches}

    def forward(self, images: torch.Tensor, tokens: list[torch.Tensor] | None = None) -> torch.Tensor:
        """B x 2 x S x S map of ``anomaly_branch`` (see the class). ``tokens``: the images' tapped patch tokens
        when they are known already (`mediclip_monai.workflows.inferers.CachedTokenInferer`); the backbone then does
        not run and ``images`` only gives the output size."""
        if tokens is None:
            tokens = self.patch_tokens(images)
        branch = self.anomaly_branch
        if branch == "mediclip":  # the paper's map, computed exactly as it always was
            return self.probabilities_from_tokens(tokens, images.shape[-2:])
        anomaly = self.anomaly_maps_from_tokens(tokens, images.shape[-2:], (branch,))[branch]
        return torch.stack((1.0 - anomaly, anomaly), dim=1)

    # --- checkpoint contents ----------------------------------------------------------------------------

    def get_extra_state(self) -> torch.Tensor:
        return encode_extra_state(
            {"format": CHECKPOINT_FORMAT, **self.identity, "calibration": self.decisions.calibration}
        )

    def set_extra_state(self, state: torch.Tensor | dict) -> None:
        state = decode_extra_state(state)
        saved = {k: v for k, v in state.items() if k not in ("format", "calibration")}
        identity = self.identity
        mismatch = {k: (saved.get(k), identity[k]) for k in ARCHITECTURE_KEYS if saved.get(k) != identity[k]}
        if mismatch:
            details = ", ".join(f"{k}: checkpoint {a!r} vs network {b!r}" for k, (a, b) in mismatch.items())
            raise CheckpointMismatchError(f"trained on another backbone ({details})")
        fingerprint = saved.get("backbone_fingerprint")
        if fingerprint is None:
            logger.warning("checkpoint records no backbone fingerprint (made by an older version); not verified")
        elif fingerprint != identity["backbone_fingerprint"]:
            raise CheckpointMismatchError(_weights_mismatch_message(saved, identity))
        self.decisions = Decisions(state.get("calibration"))


def _file_name(path: str | None) -> str | None:
    """The file name of a weights path: paths differ between machines, names identify the file."""
    if not path:
        return None
    return str(path).replace("\\", "/").rstrip("/").split("/")[-1]


def _weights_mismatch_message(saved: dict, network: dict) -> str:
    def source(identity: dict) -> str:
        if identity.get("clip_checkpoint"):
            return f"clip_checkpoint '{identity['clip_checkpoint']}'"
        return f"clip_pretrained '{identity.get('clip_pretrained')}'"

    fix = (
        f"give the same weights file with --clip_checkpoint PATH/{saved['clip_checkpoint']}"
        if saved.get("clip_checkpoint")
        else f"use the pretrained tag '{saved.get('clip_pretrained')}' it was trained with"
    )
    return (
        f"trained on other {saved.get('clip_model')} weights ({source(saved)}, fingerprint "
        f"{str(saved['backbone_fingerprint'])[:12]}) than the backbone built now ({source(network)}, fingerprint "
        f"{str(network['backbone_fingerprint'])[:12]}); its maps would come from the wrong network: {fix}"
    )


def _drop_backbone_entries(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + BACKBONE_PREFIX)]:
        del state_dict[key]


def _ignore_missing_backbone_entries(module: nn.Module, incompatible_keys) -> None:
    # The frozen backbone is rebuilt from the identity, never loaded: its keys are not "missing". Nor is the
    # memory bank (or the shots' global descriptors) of a model saved before they existed: they stay empty.
    incompatible_keys.missing_keys[:] = [
        k
        for k in incompatible_keys.missing_keys
        if BACKBONE_PREFIX not in k and not k.endswith((MEMORY_BANK_KEY, *SHOT_EMBEDDINGS_KEYS))
    ]
