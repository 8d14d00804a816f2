"""``xchannel rescale ENCODER --voc ROOT -o OUT``: Krähenbühl et al.'s data-dependent rescaling of an encoder.

The paper fine-tunes on PASCAL after the method of Krähenbühl, Doersch, Donahue, Darrell (ICLR 2016), "which
rescales the layers so they 'learn' at the same rate" (Sec. 3.2). The PASCAL tasks apply it themselves before
fine-tuning (``rescale.enabled``); this command does it once and saves the result, so that several fine-tuning
runs can start from it (with ``--no-rescale``), and it produces the k-means-initialised networks of Table 2's
k-means rows (spec ``kmeans``: initialised on the same images, then rescaled).

What it does (:func:`xchannel.pascal.prepare.prepare_encoder`): load the encoder for the transfer geometry (227 px
CaffeNet), fold BatchNorm into the layers, take ``--images`` training images (center crops), and scale each
affine layer k of conv1 ... fc7 by s_k so that the rate C_k = E[||grad W_k||^2] / ||W_k||^2 (loss eta . fc7(x),
eta a fixed random direction) is the same for all layers, biases by the cumulative product of the scales. ReLU and
max pooling are positively homogeneous, so layer k's activations are multiplied by s_1 ... s_k and fc7's output
is unchanged (the scales multiply to 1).

Before that, ``--within-layer`` applies Krähenbühl et al.'s within-layer initialisation (every channel's
pre-activation to mean 0 and variance 1 on the images, layer by layer). ``auto`` (the default) does it for the
``gaussian`` spec, whose activations otherwise fade by ~10x per layer (fc7 ~1e-7): the Gaussian rows of Table 2
are Gaussian weights with both steps. ``always`` / ``never`` force it for any encoder.

Output: an xchannel model checkpoint (our AlexNet, BatchNorm-free, transfer geometry) or, for
``torchvision-alexnet:PATH``, a torchvision state_dict; either loads back as an encoder spec (``OUT`` or
``torchvision-alexnet:OUT``). ``OUT`` with the suffix ``.json`` receives the report (scales, rate spreads before
and after, images used, the encoder's description, code version).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

NAME = "rescale"
HELP = "rescale an encoder so all layers learn at the same rate (Krähenbühl et al. 2016; k-means init for kmeans)"
DESCRIPTION = __doc__.split("\n", 2)[2] + """
Examples:

  xchannel rescale runs/alexnet/ckpt_00450000.pt --voc VOCdevkit -o runs/alexnet/rescaled.pt
  xchannel rescale kmeans --voc VOCdevkit -o runs/kmeans_rescaled.pt          # the k-means baseline
  xchannel rescale gaussian --voc VOCdevkit -o runs/gaussian_rescaled.pt      # the Gaussian baseline
  xchannel pascal cls runs/alexnet/rescaled.pt --voc VOCdevkit --no-rescale --layers all
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from xchannel.features.encoders import SPEC_HELP
    from xchannel.pascal.config import WITHIN_LAYER

    p.add_argument("encoder", help=f"encoder spec: {SPEC_HELP}")
    p.add_argument("--voc", required=True, help="VOCdevkit folder (or its parent): the images come from it")
    p.add_argument("--year", default="2007", help="VOC year (default 2007)")
    p.add_argument("--split", default="trainval", help="image set of ImageSets/Main (default trainval)")
    p.add_argument("--input-mode", choices=["gray", "color", "rgb"],
                   help="gray (L), color (Lab; a gray network gets zero ab weights, rescaled as the gray net) "
                        "or rgb (default: the encoder's own)")
    p.add_argument("--images", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--iterations", type=int, default=10,
                   help="rescaling iterations (default 10; 0 saves the loaded, k-means-initialised network)")
    p.add_argument("--alpha", type=float, default=1.0, help="damping of each step (default 1)")
    p.add_argument("--within-layer", choices=list(WITHIN_LAYER), default="auto",
                   help="normalise every channel to mean 0, variance 1 first (Krähenbühl et al.'s within-layer "
                        "initialisation); auto (default): for the gaussian spec only")
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice, k-means and eta (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto (default cpu)")
    p.add_argument("--out", "-o", required=True, help="output weight file (.pt); the report goes next to it")


def run(args: argparse.Namespace) -> int:
    from xchannel.errors import UserError
    from xchannel.features.encoders import TorchvisionAlexNetEncoder
    from xchannel.models import AlexNet, model_checkpoint
    from xchannel.pascal.config import RescaleConfig
    from xchannel.pascal.prepare import prepare_encoder
    from xchannel.pascal.record import code_version
    from xchannel.pascal.solver import resolve_device
    from xchannel.utils.io import atomic_torch_save, atomic_write_json

    if args.images < 1:
        raise UserError(f"--images must be >= 1 (got {args.images})")
    if args.iterations < 0:
        raise UserError(f"--iterations must be >= 0 (got {args.iterations})")
    out = Path(args.out)
    device = resolve_device(args.device)
    cfg = RescaleConfig(enabled=args.iterations > 0, images=args.images, iterations=args.iterations,
                        alpha=args.alpha, seed=args.seed, within_layer=args.within_layer)
    prepared = prepare_encoder(args.encoder, args.input_mode, voc_root=args.voc, year=args.year, split=args.split,
                               rescale=cfg, seed=args.seed, device=device)
    encoder = prepared.encoder
    backbone = encoder.backbone.to("cpu").eval()
    report = next((s for s in prepared.record["preparation"] if s["step"] == "rescale"), None)
    meta = {"source_spec": args.encoder, "input_mode": encoder.input_mode,
            "preparation": json.loads(json.dumps(prepared.record["preparation"], default=str))}
    if isinstance(backbone, AlexNet):
        atomic_torch_save(model_checkpoint(backbone, rescale=meta), out)
        reload_as = str(out)
    elif isinstance(encoder, TorchvisionAlexNetEncoder):
        atomic_torch_save(backbone.state_dict(), out)
        reload_as = f"torchvision-alexnet:{out}"
    else:  # prepare_encoder refuses to rescale other encoders; with --iterations 0 nothing was changed
        raise UserError(f"encoder {args.encoder!r}: only AlexNet-family encoders are rescaled and saved")
    record = {"kind": "rescale", "method": "Krähenbühl, Doersch, Donahue, Darrell (ICLR 2016), between-layer "
                                           "scale adjustment; the paper's Sec. 3.2",
              "output": str(out), "reload_as": reload_as,
              "config": {"encoder": args.encoder, "voc": args.voc, "year": args.year, "split": args.split,
                         "input_mode": args.input_mode, "images": args.images, "iterations": args.iterations,
                         "alpha": args.alpha, "within_layer": args.within_layer, "seed": args.seed},
              "encoder": prepared.record, "rescale": report, "code": code_version(),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(out.with_suffix(".json"), record)
    if report is not None:
        if "within_layer" in report:
            print(f"normalised {len(report['within_layer']['std_before'])} layers (within-layer initialisation)")
        print(f"rescaled {len(report['scales'])} layers in {report['iterations']} iteration(s): spread of "
              f"log rates {report['log_ratio_spread_before']:.3f} -> {report['log_ratio_spread_after']:.2e}")
    print(f"wrote {out} (load it as the encoder spec {reload_as}) and {out.with_suffix('.json')}")
    return 0
