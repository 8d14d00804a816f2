"""``xchannel probe`` (also ``xchannel-probe``): linear classifiers on a frozen encoder's layers (Fig. 7)."""

from __future__ import annotations

import argparse
import json

from xchannel.features.encoders import SPEC_HELP, load_encoder, parse_spec
from xchannel.probe.protocols import PROTOCOLS
from xchannel.probe.run import ProbeConfig, format_dims, probe_dims, run_probe
from xchannel.reports.figure7 import probe_table
from xchannel.utils.config import add_config_arguments, build_config

NAME = "probe"
HELP = "train linear classifiers on frozen encoder layers (ImageNet linear probes, Fig. 7)"
DESCRIPTION = f"""\
Freeze an encoder and train one linear classifier (BatchNorm without affine + linear) per layer on its pooled
features; report top-1 and top-5 on DIR/val. The encoder runs once per batch for all requested layers.

  xchannel-probe --encoder run/ckpt_00450000.pt --data DIR --layer conv1,conv3,conv5
  xchannel-probe --encoder gaussian --input-mode color --data DIR --layer all --epochs 10
  xchannel-probe --protocol goyal19 --show-dims --json

Encoders: {SPEC_HELP}.
Protocols: {', '.join(f'{p.name} ({p.description})' for p in PROTOCOLS.values())}.
With --cache DIR the pooled features are stored (fp16 memmaps) and reused by later runs on the same encoder,
data, pooling and crop; training then uses fixed center crops (augmentation is off), and the heads are trained with
3 seeds (--head-seeds). Top-1 is printed as mean ± the half-width of its 95 % interval (bootstrap over validation
images and seeds); set bootstrap.resamples / bootstrap.seed with --set."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ProbeConfig()
    parser.add_argument("--encoder", help=f"encoder spec (default {d.encoder}): {SPEC_HELP}")
    parser.add_argument("--data", help="folder with train/ and val/ ImageFolder trees")
    parser.add_argument("--layer", "--layers", dest="layers",
                        help="layer(s) to probe, comma-separated, or 'all' (default all)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), help=f"pooling + schedule (default {d.protocol})")
    parser.add_argument("--rounding", choices=["ceil", "floor"], help="zhang16 pool rounding (default ceil, Caffe)")
    parser.add_argument("--input-mode", choices=["gray", "color", "rgb"],
                        help="network input: gray (L), color (Lab), rgb (default: the encoder's own)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the protocol's, 28)")
    parser.add_argument("--lr", type=float, help="initial learning rate (default: the protocol's, 0.01)")
    parser.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    parser.add_argument("--crop", type=int, help="input crop in pixels (default: the encoder's, 227 for AlexNet)")
    parser.add_argument("--resize", type=int, help=f"shorter side before cropping (default {d.resize})")
    parser.add_argument("--ten-crop", action="store_true", default=None, help="evaluate on 10 crops")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="train on center crops (always so with --cache)")
    parser.add_argument("--cache", metavar="DIR", help="feature cache folder")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        help="the frozen encoder's precision (default auto: bf16 where the hardware has it natively)")
    parser.add_argument("--workers", type=int, help=f"data loading processes (default {d.workers})")
    parser.add_argument("--seed", type=int, help=f"seed (default {d.seed})")
    parser.add_argument("--head-seeds", type=int, metavar="N",
                        help="train the heads with N seeds (seed, seed + 1, ...); top-1 is their mean with a 95 %% "
                             "interval over images and seeds (default: 3 with --cache, else 1)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--out", "-o", help="result JSON (default results/probe/<encoder>_<protocol>.json)")
    add_config_arguments(parser, "ProbeConfig")
    parser.add_argument("--show-dims", action="store_true", help="print each layer's pooled shape and exit")
    parser.add_argument("--json", action="store_true", help="with --show-dims: print JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


_FLAGS = ("encoder", "data", "protocol", "rounding", "input_mode", "epochs", "lr", "batch_size", "crop", "resize",
          "ten_crop", "augment", "cache", "precision", "workers", "seed", "head_seeds", "device", "out")


def config_from_args(args: argparse.Namespace) -> ProbeConfig:
    """Defaults <- ``--config`` YAML <- explicit flags <- ``--set`` overrides."""
    cfg = build_config(ProbeConfig, args.config)
    values = {k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None}
    if args.layers is not None:
        values["layers"] = [s.strip() for s in args.layers.split(",") if s.strip()]
    if args.no_progress:
        values["progress"] = False
    from dataclasses import replace

    cfg = replace(cfg, **values)
    return build_config(ProbeConfig, None, args.overrides, base=cfg)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.show_dims:
        kind, arg = parse_spec(cfg.encoder)
        spec = f"gaussian:{arg}" if kind == "kmeans" else cfg.encoder  # same shapes, and no images needed
        encoder = load_encoder(spec, input_mode=cfg.input_mode, geometry=cfg.geometry, seed=cfg.seed)
        dims = probe_dims(cfg.protocol, encoder, cfg.crop, cfg.layers, cfg.rounding)
        print(json.dumps({k: {"shape": v["shape"], "dim": v["dim"]} for k, v in dims.items()}) if args.json
              else format_dims(dims))
        return 0
    result = run_probe(cfg)
    enc = result["encoder"]
    print(f"{enc['name']} [{enc['input_mode']}], protocol {cfg.protocol}, {result['data']['classes']} classes, "
          f"{result['data']['evaluated']} val images, {result['timing']['seconds']:.1f} s")
    print(probe_table(result))
    print(f"wrote {result['output']}")
    return 0
