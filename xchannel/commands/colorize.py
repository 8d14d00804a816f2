"""``xchannel colorize``: colorize photos with an xchannel checkpoint or the authors' released weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from xchannel.errors import UserError

NAME = "colorize"
HELP = "colorize photos (legacy black-and-white, or colour photos made gray)"
DESCRIPTION = """Colorize photos with a trained colorizer.

  xchannel colorize photo.jpg -o out/ --checkpoint runs/vgg/ckpt_00450000.pt
  xchannel colorize old_photos/ -o out/ --weights colorization_release_v2-9b330a0b.pth --temperature 0.38

Any input size: the network runs at --size px (default 256), ab is upsampled to the full resolution and joined with
the photo's own L. On CPU the 3x3 convolutions run as Winograd F(4x4, 3x3): the same function up to float32
rounding, with fewer multiplications; --exact-conv computes them directly. A folder is processed recursively with a
progress bar; an unreadable file is reported by name while the others are still done; the closing summary counts
and lists the unreadable files (exit status 1 when any file failed)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--out", required=True, help="output folder (PNG files)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an xchannel training checkpoint")
    src.add_argument("--weights", help="the released colorization_release_v2-9b330a0b.pth (or an xchannel checkpoint)")
    p.add_argument("--temperature", "-T", type=float, default=0.38, help="annealed-mean temperature (Eq. 5)")
    p.add_argument("--size", type=int, default=256, choices=(224, 256), help="network input size")
    p.add_argument("--device", default="auto")
    p.add_argument("--exact-conv", action="store_true",
                   help="on CPU, compute the 3x3 convolutions directly instead of as Winograd F(4x4, 3x3) (slower; "
                        "the Winograd output differs by float32 rounding only)")


def _inputs(items: list[str]) -> list[tuple[Path, Path | None]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += [(f, p) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS]
        elif p.exists():
            out.append((p, None))
        else:
            raise UserError(f"{p}: no such file or folder")
    return out


def run(args: argparse.Namespace) -> int:
    from xchannel.checkpoints import load_network
    from xchannel.colorize import colorize_image, inference_network, output_path
    from xchannel.data.images import BadImageError, load_rgb
    from xchannel.train.engine import resolve_device

    device = resolve_device(args.device)
    model, info = load_network(args.checkpoint or args.weights)
    model = inference_network(model, device, exact_conv=args.exact_conv)
    files = _inputs(args.inputs)
    out_dir = Path(args.out)
    failed = []
    for src, root in tqdm(files, desc="colorize", unit="img"):
        try:
            img = load_rgb(src)
        except BadImageError as err:
            failed.append(f"{src}: {err.reason}")
            print(f"xchannel colorize: skipped {src}: {err.reason}", file=sys.stderr)
            continue
        result = colorize_image(model, img, args.size, args.temperature, info["loss_kind"], device)
        dst = output_path(src, out_dir, root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        from xchannel.utils.io import atomic_write

        with atomic_write(dst) as f:
            result.save(f, format="PNG")
    print(f"colorized {len(files) - len(failed)} of {len(files)} images into {out_dir}"
          + (f"; {len(failed)} unreadable, skipped:" if failed else ""))
    for line in failed:
        print(f"  {line}")
    return 1 if failed else 0
