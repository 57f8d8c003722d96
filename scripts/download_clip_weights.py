"""Save CLIP weights to one local file, on a machine that can reach the model hub.

    python scripts/download_clip_weights.py --clip_model ViT-L-14 --clip_pretrained openai --output clip.pt

Then, on the machine without internet access: `--clip_checkpoint clip.pt` (same --clip_model and
--clip_pretrained, so the activation matching those weights is chosen).
"""

import argparse
import os

import torch

from mediclip_monai.networks.clip_backbone import create_clip_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip_model", default="ViT-L-14")
    parser.add_argument("--clip_pretrained", default="openai")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    model = create_clip_model(args.clip_model, args.clip_pretrained)
    tmp = args.output + ".partial"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.output)
    print(f"saved {args.clip_model}/{args.clip_pretrained} weights to {args.output}")


if __name__ == "__main__":
    main()
