"""``xchannel convert``: checkpoint conversions (released weights import, AlexNet geometry, BatchNorm folding)."""

from __future__ import annotations

import argparse

NAME = "convert"
HELP = "convert checkpoints: import the released colorizer, change AlexNet geometry, fold BatchNorm"
DESCRIPTION = """Convert a network file into an xchannel model checkpoint.

  xchannel convert official colorization_release_v2-9b330a0b.pth -o eccv16.pt
  xchannel convert geometry runs/alexnet/ckpt_00450000.pt -o alexnet-transfer.pt --to transfer --fold-bn

`official` imports the authors' released PyTorch colorizer (its forward pass is reproduced exactly; see
xchannel.convert). `geometry` switches an AlexNet between the pretext geometry (conv1 padding 5, dense
colorization head) and the transfer geometry (conv1 padding 0, 227 px input, standard pools, fc6/fc7 fully
connected); the weights are shared. --fold-bn folds BatchNorm into the preceding layers (exact in eval mode)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("official", "geometry"))
    p.add_argument("src", help="input file")
    p.add_argument("-o", "--out", required=True, help="output checkpoint (written atomically)")
    p.add_argument("--to", choices=("pretext", "transfer"), help="target geometry (kind geometry)")
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into conv/fc weights")


def run(args: argparse.Namespace) -> int:
    from xchannel.convert import convert_checkpoint, import_official_eccv16
    from xchannel.errors import UserError

    if args.kind == "official":
        model = import_official_eccv16(args.src, args.out)
    else:
        if args.to is None and not args.fold_bn:
            raise UserError("geometry: give --to pretext|transfer and/or --fold-bn")
        model = convert_checkpoint(args.src, args.out, args.to, args.fold_bn)
    print(f"wrote {args.out}: {getattr(model, 'registry_name', type(model).__name__)} {model.hparams}")
    return 0
