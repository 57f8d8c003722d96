"""How far can any image score built from the model's signals go? The image-level score's ceiling on a test set.

    python bench/image_level_ceiling.py --runs DIR [the train.json overrides of the run]

``DIR`` is the output of ``scripts/few_shot_seeds.py`` (its ``seed_<S>/models/model.pt``), the overrides those
it was run with (``--datalist``, ``--k_shot``, ``--clip_model``...), so each seed's shots and calibration set
are rebuilt as training made them. For every seed the model's signals are computed on the calibration set and
on the datalist's test section, and a family of image scores is formed from them:

- each map (``mediclip``, ``memory_bank``, ``fused``) read as the mean of its top 0.1, 1, 5 or 20% of
  foreground pixels, as is and minus the slice's foreground median;
- the global signals (`MediCLIP.global_signals`: the image embedding's and the class tokens' distance to the
  shots', the image-text score);
- every weighted sum (weights 0.25, 0.5, 0.75) of two of them, each normalised by its median and IQR over the
  normal calibration slices.

A volume takes its best slice (the model's own score: as its rule aggregates). It then prints, per seed and as
mean +/- std, the test image AUROC of:

1. ``default``: the model's own image-level score (what a run decides with);
2. ``calibration's pick``: the score of the family with the best AUROC on the calibration set, an honest choice;
3. ``best fixed, chosen on test``: the one score of the family, and the one pair, with the best mean test AUROC
   over the seeds, the same for every seed (chosen on the test set: optimistic bounds, not results);
4. ``best per seed, chosen on test``: each seed's best single score, and its best pair (bounds that overfit a
   small test set more still).

When (3) does not reach a target, no image score of the family does with a choice made once, however it is
made: the limit is then the signals (the backbone), not the rule that combines them. Reads model.pt, writes nothing.
"""

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from train_recipe import REPO, train_recipe

from mediclip_monai.data.datalists import load_datalist
from mediclip_monai.data.loading import load_training_slices
from mediclip_monai.data.unseen_anomalies import make_calibration_set
from mediclip_monai.decisions import calibration
from mediclip_monai.decisions.image_level import MIN_FOREGROUND, aggregate_slices, slice_probabilities
from mediclip_monai.decisions.scoring import FOREGROUND_LEVEL, slice_scores
from mediclip_monai.metrics import roc_auc
from mediclip_monai.networks.checkpoint import load_state, read_model_state
from mediclip_monai.workflows.calibrate import CALIBRATION_SEED_OFFSET, calibration_outputs

sys.path.insert(0, str(Path(REPO) / "scripts"))
from few_shot_seeds import overrides_from  # noqa: E402  (the same --key value overrides as the seeds' run)

TOP_FRACTIONS = (0.001, 0.01, 0.05, 0.2)
PAIR_WEIGHTS = (0.25, 0.5, 0.75)
GLOBAL_SIGNALS = ("embedding_knn", "class_token_knn", "image_text")


def map_scores(maps: torch.Tensor, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The map rules of the family for N maps of N slices (N x S x S each)."""
    scores = {}
    fg = images > FOREGROUND_LEVEL
    medians = np.array([float(m[f].median()) if f.any() else float(m.median()) for m, f in zip(maps, fg)])
    for fraction in TOP_FRACTIONS:
        top = slice_scores(maps, images, top_fraction=fraction)
        scores[f"top {fraction:g}"] = top
        scores[f"top {fraction:g} - median"] = top - medians
    return scores


def slice_family(network, items: list[dict], preprocessing) -> dict[str, np.ndarray]:
    """{score name: N per-slice values} of ``items`` (dicts with a 1 x S x S ``image`` in [0, 1]), and the
    model's own image-level probabilities under ``default``."""
    maps, signals = calibration_outputs(network, items, preprocessing)
    maps["fused"] = calibration.fused_map(maps["mediclip"], maps["memory_bank"], network.decisions.fusion)
    images = torch.stack([item["image"][0] for item in items]).float()
    family = {f"{name} {rule}": v for name in maps for rule, v in map_scores(maps[name], images).items()}
    family.update({name: signals[name] for name in GLOBAL_SIGNALS})
    rule = network.decisions.image_level
    signals["map"] = slice_scores(maps[rule["map_branch"]], images)
    family["default"] = slice_probabilities(signals, rule)
    family["foreground"] = signals["foreground"]
    return family


def case_values(values: np.ndarray, entries: np.ndarray, foreground: np.ndarray, slice_fraction: float) -> np.ndarray:
    """Per case (entry), its slices' values aggregated as the image-level rule aggregates (0: the best slice with
    foreground; a 2D image: its one slice)."""
    rule = {"slice_fraction": slice_fraction}
    return np.array(
        [aggregate_slices(values[entries == e], foreground[entries == e], rule)[0] for e in np.unique(entries)]
    )


def seed_scores(seed: int, runs: Path, overrides: dict) -> dict:
    """The family's calibration and test scores of one seed's model (normalised on the normal calibration
    slices), and the labels of both sets."""
    model_path = runs / f"seed_{seed}" / "models" / "model.pt"
    parser = train_recipe(**{**overrides, "seed": seed, "ckpt_dir": str(model_path.parent)})
    network = parser.get_parsed_content("network_def")
    load_state(network, read_model_state(str(model_path)), str(model_path))
    network.eval()
    if network.decisions.image_level is None:
        raise SystemExit(f"{model_path}: no image-level rule (made before it existed); run calibrate first")
    data = parser.get_parsed_content("data")
    preprocessing = parser.get_parsed_content("validate::preprocessing")
    contract = parser.get_parsed_content("clip_input")
    cases = make_calibration_set(data.held_out_slices, seed + CALIBRATION_SEED_OFFSET)
    test_items = load_datalist(parser.get_parsed_content("datalist_file"), "test")
    test = load_training_slices(test_items, contract.image_size, MIN_FOREGROUND, contract.interpolation)
    calibration_family = slice_family(network, cases, preprocessing)
    test_family = slice_family(network, test, preprocessing)
    entries = np.array([item["entry"] for item in test])
    test_labels = np.array([bool(item.get("abnormal", 0)) for item in test_items])
    calibration_labels = np.array([item["copy"] > 0 for item in cases])
    # the model's own score aggregates a volume's slices by its rule; the family takes the best slice
    fractions = {name: 0.0 for name in test_family} | {"default": network.decisions.image_level["slice_fraction"]}
    scores = {}
    for name in test_family:
        if name == "foreground":
            continue
        normal = calibration_family[name][~calibration_labels]
        q25, q50, q75 = np.percentile(normal, [25, 50, 75])
        scale = max(q75 - q25, 1e-9)
        scores[name] = (
            (calibration_family[name] - q50) / scale,
            case_values((test_family[name] - q50) / scale, entries, test_family["foreground"], fractions[name]),
        )
    return {"scores": scores, "calibration_labels": calibration_labels, "test_labels": test_labels}


def aurocs(seed: dict) -> tuple[dict, dict]:
    """{score: calibration AUROC}, {score: test AUROC} over the family's single scores and pairs."""
    single = {name: v for name, v in seed["scores"].items() if name != "default"}
    candidates = dict(single)
    for (a, va), (b, vb) in itertools.combinations(single.items(), 2):
        for w in PAIR_WEIGHTS:
            candidates[f"{w:g} {a} + {1 - w:g} {b}"] = (w * va[0] + (1 - w) * vb[0], w * va[1] + (1 - w) * vb[1])
    calibration_auroc = {n: roc_auc(seed["calibration_labels"], v[0]) for n, v in candidates.items()}
    test_auroc = {n: roc_auc(seed["test_labels"], v[1]) for n, v in candidates.items()}
    return calibration_auroc, test_auroc


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} +/- {np.std(values):.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="few_shot_seeds.py's --output_dir")
    args, extra = parser.parse_known_args(argv)
    overrides = overrides_from(extra)
    seeds = sorted(int(p.name.split("_")[1]) for p in args.runs.glob("seed_*") if (p / "models" / "model.pt").is_file())
    if not seeds:
        raise SystemExit(f"{args.runs}: no seed_<S>/models/model.pt (the output of scripts/few_shot_seeds.py)")
    rows: dict[str, list[float]] = {}
    all_test: list[dict] = []
    for seed in seeds:
        scores = seed_scores(seed, args.runs, overrides)
        calibration_auroc, test_auroc = aurocs(scores)
        single = [n for n in test_auroc if n in scores["scores"]]
        pick = max(calibration_auroc, key=calibration_auroc.get)
        best_single = max(single, key=test_auroc.get)
        rows.setdefault("default", []).append(roc_auc(scores["test_labels"], scores["scores"]["default"][1]))
        rows.setdefault("calibration's pick", []).append(test_auroc[pick])
        rows.setdefault("best per seed, chosen on test: one score", []).append(test_auroc[best_single])
        rows.setdefault("best per seed, chosen on test: a pair", []).append(max(test_auroc.values()))
        all_test.append(test_auroc)
        print(
            f"seed {seed}: default {rows['default'][-1]:.3f}; calibration's pick '{pick}' "
            f"(calibration {calibration_auroc[pick]:.3f}, test {test_auroc[pick]:.3f}); best on test "
            f"'{best_single}' {test_auroc[best_single]:.3f}",
            flush=True,
        )
    single = [n for n in all_test[0] if n in scores["scores"]]
    fixed = {
        "best fixed, chosen on test: one score": max(single, key=lambda n: np.mean([t[n] for t in all_test])),
        "best fixed, chosen on test: a pair": max(all_test[0], key=lambda n: np.mean([t[n] for t in all_test])),
    }
    print(f"\ntest image AUROC over {len(seeds)} seed(s) ({args.runs}):")
    for name in ("default", "calibration's pick"):
        print(f"  {name:42s} {summary(rows[name])}")
    for name, chosen in fixed.items():
        print(f"  {name:42s} {summary([t[chosen] for t in all_test])}  ('{chosen}')")
    for name in ("best per seed, chosen on test: one score", "best per seed, chosen on test: a pair"):
        print(f"  {name:42s} {summary(rows[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
