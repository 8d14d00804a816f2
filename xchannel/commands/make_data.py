"""``xchannel make-data OUT``: write the embedded procedural data set (ImageFolder + VOC2007/VOC2012 trees)."""

from __future__ import annotations

import argparse

from xchannel.data.synthetic import SHAPE_CLASSES, SyntheticSpec, make_dataset

NAME = "make-data"
HELP = "write the embedded procedural data set (ImageNet-style folder and PASCAL VOC trees) to OUT"
DESCRIPTION = """\
Write the seeded procedural data set that stands in for ImageNet and PASCAL VOC:

  OUT/imagenet/{train,val}/<class>/*.JPEG      ImageFolder tree (+ train.txt / val.txt image lists)
  OUT/VOCdevkit/VOC2007/                      JPEGImages, Annotations, SegmentationClass, ImageSets
  OUT/VOCdevkit/VOC2012/                      the same layout (train/val), for the segmentation benchmark
  OUT/manifest.json                           spec, classes and their colour modes, counts, seconds

Objects are shapes whose silhouette and texture show in lightness, with 2-3 class-specific colour
modes; the same seed always gives the same bytes. The default set takes a few seconds."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SyntheticSpec()
    parser.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument("--classes", type=int, default=d.classes,
                        help=f"ImageFolder classes, 1..{len(SHAPE_CLASSES)} (default {d.classes}; VOC always uses 20)")
    parser.add_argument("--train-per-class", type=int, default=d.train_per_class,
                        help=f"ImageFolder training images per class (default {d.train_per_class})")
    parser.add_argument("--val-per-class", type=int, default=d.val_per_class,
                        help=f"ImageFolder validation images per class (default {d.val_per_class})")
    parser.add_argument("--voc-trainval", type=int, default=d.voc_trainval,
                        help=f"VOC trainval images per year (default {d.voc_trainval})")
    parser.add_argument("--voc-test", type=int, default=d.voc_test, help=f"VOC2007 test images (default {d.voc_test})")
    parser.add_argument("--seg-val", type=int, default=d.seg_val,
                        help=f"VOC2011 segmentation val images (default {d.seg_val}; seg11valid is those not in SBD)")
    parser.add_argument("--no-voc2012", action="store_true", help="do not write the VOC2012 tree")
    parser.add_argument("--no-sbd", action="store_true", help="do not write the VOC2011 and SBD trees")
    parser.add_argument("--size", type=int, default=d.size, help=f"shorter image side in pixels (default {d.size})")
    parser.add_argument("--gray-fraction", type=float, default=d.gray_fraction,
                        help=f"share of ImageFolder images stored as grayscale JPEGs (default {d.gray_fraction})")
    parser.add_argument("--quality", type=int, default=d.jpeg_quality, help=f"JPEG quality (default {d.jpeg_quality})")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that render the images (default: one per core, at most 4); the files do "
                             "not depend on it")
    parser.add_argument("--force", action="store_true", help="replace an existing data set in OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    spec = SyntheticSpec(
        seed=args.seed, classes=args.classes, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
        voc_trainval=args.voc_trainval, voc_test=args.voc_test, seg_val=args.seg_val, voc2012=not args.no_voc2012, sbd=not args.no_sbd,
        size=args.size,
        gray_fraction=args.gray_fraction, jpeg_quality=args.quality,
    )
    m = make_dataset(args.out, spec, overwrite=args.force, progress=not args.no_progress,
                     workers=args.workers)
    inet = m["imagenet"]["images"]
    print(f"wrote {m['images']} images to {args.out} in {m['seconds']:.1f} s")
    print(f"  imagenet: {spec.classes} classes, train {inet['train']}, val {inet['val']} "
          f"({len(m['imagenet']['gray_images'])} grayscale)")
    for year, v in m["voc"].items():
        splits = ", ".join(f"{k} {n}" for k, n in v["images"].items())
        print(f"  VOC{year}: {splits}; {v['objects']} objects ({v['difficult']} difficult, "
              f"{v['truncated']} truncated)")
    if m.get("sbd"):
        print(f"  SBD: train {m['sbd']['train']}, val {m['sbd']['val']}; VOC2011 seg11valid {m['sbd']['seg11valid']}")
    return 0
