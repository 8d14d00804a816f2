"""``xchannel prior DATA -o prior.npy``: the empirical distribution over the 313 ab bins of a data set."""

from __future__ import annotations

import argparse
import json

import numpy as np

NAME = "prior"
HELP = "count the ab-bin frequencies of a data set (the prior p of Eq. 4)"
DESCRIPTION = """Stream a data set (an ImageFolder tree or an image list) and count, for every pixel of every
image with colour, its nearest of the 313 ab bins. The result sums to 1 and can be given to training as
pretext.loss.prior=PATH in place of the authors' ImageNet prior. Bad images are skipped, counted and named."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="ImageFolder tree or image list")
    p.add_argument("-o", "--out", required=True, help="output .npy (float64, 313 values)")
    p.add_argument("--size", type=int, default=176, help="images are resized and centre-cropped to this size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from xchannel import color as C
    from xchannel.data.images import ResizeCenterCrop, SkipCounter, collate_skip
    from xchannel.train.engine import open_images
    from xchannel.utils.io import atomic_write

    data = open_images(args.data, ResizeCenterCrop(args.size, resize=args.size))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=collate_skip)
    skips = SkipCounter()

    def ab_batches():
        for batch in tqdm(loader, desc="prior", unit="batch"):
            if skips.update(batch):
                yield C.rgb_to_lab(batch["image"].float() / 255.0)[:, 1:]

    prior = C.empirical_prior(ab_batches()).numpy()
    with atomic_write(args.out) as f:
        np.save(f, prior)
    top = int(prior.argmax())
    print(json.dumps({"out": args.out, "images": len(data), "most_common_bin": C.ab_bins()[top].tolist(),
                      "its_probability": float(prior[top]), **skips.summary()}, indent=2))
    return 0
