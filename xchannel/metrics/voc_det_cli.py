"""``xchannel evaluate voc-det``: PASCAL VOC detection AP of any detector's standard result files.

Inputs, as the VOC devkit lays them out:

* ``ROOT/VOC<year>/ImageSets/Main/<split>.txt``: the evaluated image ids, one per line;
* ``ROOT/VOC<year>/Annotations/<id>.xml``: the ground truth;
* ``RESULTS/<comp>_det_<split>_<class>.txt`` (``comp4`` by default): one detection per line,
  ``image_id confidence xmin ymin xmax ymax`` in 1-based pixel coordinates, as ``VOCevaldet.m`` reads them.

Scoring is :func:`score_result_files`, which the Fast R-CNN task (``xchannel pascal det``) calls too, so both
give the same AP on the same files: :func:`xchannel.metrics.voc.voc_det_eval` with the devkit's matching
(``VOCevaldet.m``: a detection matches at overlap ``>= 0.5``; ``--strict-iou`` gives py-faster-rcnn's ``> 0.5``),
difficult objects ignored. The AP formula follows the devkit of the year: the 11-point AP up to VOC2009, the area
under the precision envelope from VOC2010 on (``--metric`` overrides). A class whose result file is missing scores
AP 0, with a warning.

The ground truth is read as the devkit reads it (``read_annotation(..., "devkit")``): boxes that start at 0 or
reach past the image, float coordinates, missing ``<difficult>``/``<truncated>``/``<pose>``, objects of other
classes are all scored exactly as ``VOCevaldet.m`` scores them, and one warning names the files that hold them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from xchannel.data.voc import VOC_CLASSES, read_annotation, read_image_set, resolve_root, warn_irregular
from xchannel.errors import UserError
from xchannel.metrics.voc import ClassDetections, VOCDetectionResult, voc_det_eval

HELP = "PASCAL VOC detection: per-class AP and mAP of comp4_det_<split>_<class>.txt result files."
DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devkit", required=True, type=Path, metavar="ROOT",
                        help="VOCdevkit folder (the one that holds VOC<year>/) or its parent")
    parser.add_argument("--year", default="2007", help="VOC year (default: 2007)")
    parser.add_argument("--split", default="test", help="image set in ImageSets/Main (default: test)")
    parser.add_argument("--results", required=True, type=Path, metavar="DIR",
                        help="folder with <comp>_det_<split>_<class>.txt files")
    parser.add_argument("--comp", default="comp4",
                        help="competition prefix of the result files (default: comp4, any training data)")
    parser.add_argument("--metric", choices=("auto", "voc07", "voc12"), default="auto",
                        help="AP formula: voc07 = 11-point, voc12 = area under the envelope; auto (default) = "
                             "the devkit of --year (voc07 before 2010)")
    parser.add_argument("--iou", type=float, default=0.5, help="overlap threshold (default: 0.5)")
    parser.add_argument("--strict-iou", action="store_true",
                        help="match at overlap strictly above the threshold, as py-faster-rcnn's voc_eval.py; the "
                             "default is >= as the VOC devkit's VOCevaldet.m (they differ only at exactly the "
                             "threshold)")
    parser.add_argument("--json", action="store_true", help='print {"ap": {class: AP}, "map": mAP} instead of a table')
    parser.add_argument("--out", type=Path, help="also write the result and the settings to this JSON file")


def read_results_file(path: Path, image_ids: set[str]) -> ClassDetections:
    """Parse one ``<comp>_det_<split>_<class>.txt`` file; every line must be ``id score x1 y1 x2 y2``.

    Raises :class:`UserError` naming the file and line for a wrong field count, a non-number, a non-finite
    value, an inverted box, or an image id outside the evaluated set (the devkit stops there too).
    """
    ids: list[str] = []
    rows: list[list[float]] = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}, line {lineno}"
            if len(fields) != 6:
                raise UserError(f"{where}: expected 6 fields 'image_id score xmin ymin xmax ymax', "
                                f"got {len(fields)}: {line.strip()[:80]!r}")
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                raise UserError(f"{where}: score and box must be numbers: {line.strip()[:80]!r}") from None
            if not all(math.isfinite(v) for v in values):
                raise UserError(f"{where}: score and box must be finite numbers: {line.strip()[:80]!r}")
            _, x1, y1, x2, y2 = values
            if x2 < x1 or y2 < y1:
                raise UserError(f"{where}: box has xmax < xmin or ymax < ymin: {line.strip()[:80]!r}")
            if fields[0] not in image_ids:
                raise UserError(f"{where}: image {fields[0]!r} is not in the evaluated image set")
            ids.append(fields[0])
            rows.append(values)
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return ClassDetections(ids, arr[:, 0], arr[:, 1:])


def load_annotations(anno_dir: Path, image_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``anno_dir/<id>.xml`` for every id as the devkit reads them (with a progress bar on a terminal); one
    warning names the files with boxes or fields a strict reader would refuse (:func:`warn_irregular`)."""
    from tqdm import tqdm

    out: dict[str, dict[str, Any]] = {}
    for img in tqdm(image_ids, desc="annotations", unit="img", disable=None, file=sys.stderr):
        path = anno_dir / f"{img}.xml"
        if not path.is_file():
            raise UserError(f"{path}: annotation file not found (image {img!r} is listed in the image set)")
        out[img] = read_annotation(path, "devkit")
    warn_irregular(out, anno_dir)
    return out


def read_scoring_inputs(devkit: str | Path, year: str | int, split: str, results: str | Path, *,
                        comp: str = "comp4") -> tuple[dict[str, ClassDetections], list[str], dict[str, dict[str, Any]]]:
    """What :func:`score_result_files` scores: (detections per class read from ``<results>/<comp>_det_<split>_
    <class>.txt``, evaluated image ids, their annotations read as the devkit reads them). A missing class file is
    left out with a warning (its AP is 0)."""
    voc = resolve_root(devkit, year)
    image_ids = list(dict.fromkeys(read_image_set(devkit, year, split)))
    if not image_ids:
        raise UserError(f"{voc / 'ImageSets' / 'Main' / f'{split}.txt'}: the image set is empty")
    id_set = set(image_ids)
    detections: dict[str, ClassDetections] = {}
    for c in VOC_CLASSES:
        path = Path(results) / f"{comp}_det_{split}_{c}.txt"
        if not path.is_file():
            print(f"warning: {path} not found: AP of class {c!r} is 0", file=sys.stderr)
            continue
        detections[c] = read_results_file(path, id_set)
    if not detections:
        print(f"warning: no {comp}_det_{split}_<class>.txt file in {results}", file=sys.stderr)
    return detections, image_ids, load_annotations(voc / "Annotations", image_ids)


def score_result_files(devkit: str | Path, year: str | int, split: str, results: str | Path, *,
                       comp: str = "comp4", metric: str = "voc07", iou: float = 0.5,
                       inclusive: bool = True) -> tuple[VOCDetectionResult, dict[str, ClassDetections], list[str]]:
    """Score ``<results>/<comp>_det_<split>_<class>.txt`` against the devkit tree: (result, detections per class
    read, evaluated image ids). A missing class file scores AP 0 with a warning."""
    detections, image_ids, annotations = read_scoring_inputs(devkit, year, split, results, comp=comp)
    result = voc_det_eval(annotations, detections, VOC_CLASSES, iou_threshold=iou, inclusive=inclusive,
                          metric=metric)
    return result, detections, image_ids


def format_table(result: VOCDetectionResult, counts: dict[str, int], title: str) -> str:
    """A plain-text table: class, AP (%), non-difficult objects, detections; then the mAP."""
    width = max(len(c) for c in result.ap) + 2
    lines = [title, f"{'class':<{width}}{'AP (%)':>8}{'objects':>10}{'detections':>12}"]
    for c, ap in result.ap.items():
        lines.append(f"{c:<{width}}{100 * ap:>8.1f}{result.npos.get(c, 0):>10d}{counts.get(c, 0):>12d}")
    lines.append(f"{'mAP':<{width}}{100 * result.map:>8.1f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not str(args.year).isdigit():
        raise UserError(f"--year must be a VOC year such as 2007, got {args.year!r}")
    voc = resolve_root(args.devkit, args.year)
    if not Path(args.results).is_dir():
        raise UserError(f"{args.results}: results folder not found")
    if not 0.0 < args.iou < 1.0:
        raise UserError(f"--iou must be in (0, 1), got {args.iou}")
    metric = args.metric
    if metric == "auto":
        metric = "voc07" if int(args.year) < 2010 else "voc12"

    inclusive = not args.strict_iou
    result, detections, image_ids = score_result_files(args.devkit, args.year, args.split, args.results,
                                                       comp=args.comp, metric=metric, iou=args.iou,
                                                       inclusive=inclusive)

    payload = {"ap": result.ap, "map": result.map}
    if args.out is not None:
        from xchannel.utils.io import atomic_write_json

        atomic_write_json(args.out, {
            **payload,
            "npos": result.npos,
            "config": {"devkit": str(args.devkit), "year": str(args.year), "split": args.split,
                       "results": str(args.results), "comp": args.comp, "metric": metric, "iou": args.iou,
                       "match": ">=" if inclusive else ">", "images": len(image_ids)},
        })
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        rule = ">=" if inclusive else ">"
        name = "11-point AP" if metric == "voc07" else "area under the precision envelope"
        title = (f"VOC{args.year} {args.split} detection, {len(image_ids)} images: {name}, "
                 f"match at IoU {rule} {args.iou:g}, difficult objects ignored")
        counts = {c: len(d.scores) for c, d in detections.items()}
        print(format_table(result, counts, title))
    return 0
