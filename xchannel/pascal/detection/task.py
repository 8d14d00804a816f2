"""The Fast R-CNN task: training, testing (NMS, the devkit's result files, scoring), the result record."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xchannel.data.images import SkipCounter, collate_skip_lists
from xchannel.data.voc import VOC_CLASSES, VOCDetection
from xchannel.errors import UserError
from xchannel.features.encoders import Encoder
from xchannel.metrics.uncertainty import BootstrapConfig, detection_map_interval
from xchannel.metrics.voc import voc_det_eval
from xchannel.pascal import proposals as props
from xchannel.pascal import solver
from xchannel.pascal.detection.boxes import BBOX_MEANS, clip_boxes, decode_boxes, sample_rois
from xchannel.pascal.detection.config import Config
from xchannel.pascal.detection.data import DetectionImages, TrainBatches, proposal_recall, proposals_for
from xchannel.pascal.detection.fast_rcnn import FEATURE_STRIDE, POOL_SIZE, FastRCNN, _rpn_proposals, build_rpn
from xchannel.pascal.prepare import PreparedEncoder, dataset_name, prepare_encoder
from xchannel.pascal.record import default_output, result_record, write_result
from xchannel.pascal.trunk import Trunk
from xchannel.utils.config import to_dict
from xchannel.utils.io import atomic_torch_save, atomic_write_text, safe_torch_load

#: Smallest input side for which AlexNet's conv5 has at least one cell (conv1 11/4, two 3/2 pools).
MIN_INPUT = 67
#: Gray (RGB 0.5) padding of images smaller than MIN_INPUT, before the encoder's input conversion.
PAD_VALUE = 0.5


def detection_loss(scores: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast R-CNN's multi-task loss: softmax cross-entropy over all RoIs, and smooth L1 (beta 1) on the
    foreground RoIs' ground-truth-class deltas, summed and divided by the number of RoIs."""
    loss_cls = F.cross_entropy(scores, labels)
    fg = labels > 0
    pred = deltas[fg, labels[fg]]
    loss_box = F.smooth_l1_loss(pred, targets[fg], beta=1.0, reduction="sum") / max(len(labels), 1)
    return loss_cls, loss_box


def _prepare(encoder: Encoder, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = image.to(device).float().div_(255.0)[None]
    h, w = x.shape[-2:]
    if h < MIN_INPUT or w < MIN_INPUT:
        x = F.pad(x, (0, max(0, MIN_INPUT - w), 0, max(0, MIN_INPUT - h)), value=PAD_VALUE)
    return encoder.prepare(x)


def _optimizer(model: FastRCNN, trunk: Trunk, cfg: Config) -> tuple[torch.optim.Optimizer, list[str]]:
    groups = trunk.groups()
    unknown = [n for n in cfg.train.frozen if n not in groups]
    if unknown:
        raise UserError(f"train.frozen: unknown layer group(s) {unknown}; this encoder's groups: "
                        f"{', '.join(groups)}")
    frozen = solver.freeze_groups(trunk, [n for n in groups if n not in cfg.train.frozen])
    o = cfg.optim
    modules = [(n, m, o.ab_lr_mult if n == "conv1_ab" else 1.0) for n, m in groups.items()]
    modules += [(n, m, 1.0) for n, m in (("cls_score", model.cls_score), ("bbox_pred", model.bbox_pred),
                                         ("rpn", model.rpn)) if m is not None]
    param_groups = solver.caffe_param_groups(modules, o.weight_decay, bias_lr_mult=o.bias_lr_mult,
                                             bias_decay_mult=o.bias_decay_mult)
    return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum), frozen


def _train(cfg: Config, model: FastRCNN, trunk: Trunk, encoder: Encoder, data: "DetectionImages",
           device: torch.device, files: Path) -> dict[str, Any]:
    o, t = cfg.optim, cfg.train
    keep = [k for k in range(len(data.voc)) if any(not obj["difficult"] for obj in data.voc.annotations[k]["objects"])]
    optimizer, frozen = _optimizer(model, trunk, cfg)
    start, history = 0, []
    ckpt = files / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        state = safe_torch_load(ckpt)
        same = {"optim": to_dict(o), "train": to_dict(t), "encoder": cfg.encoder, "input_mode": cfg.input_mode}
        if state.get("settings") != same:
            raise UserError(f"{ckpt}: was written by a run with other settings (encoder, input mode, optim or "
                            f"train); remove it or resume with the same settings")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["iteration"]), list(state.get("history", []))
    sampler = TrainBatches(keep, iterations=o.iterations, start=start, images_per_batch=o.batch_size,
                           scales=t.scales, max_size=t.max_size, mirror=t.mirror, seed=cfg.seed)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate_skip_lists)
    counter = SkipCounter()
    gen = torch.Generator().manual_seed(cfg.seed * 31 + start)
    rois_per_image = t.rois_per_batch // o.batch_size
    solver.set_train_mode(model)
    params = solver.trainable_parameters(model)
    from tqdm import tqdm

    bar = tqdm(total=o.iterations, initial=start, desc="fast r-cnn", unit="it", disable=not cfg.progress or None,
               file=sys.stderr)
    window: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    try:
        for it, batch in enumerate(loader, start):
            lr = solver.step_lr(o.lr, it, o.lr_step, o.lr_gamma)
            solver.set_lr(optimizer, lr)
            bar.update(1)
            if counter.update(batch) == 0:
                continue
            pooled, labels, targets, rpn_losses = [], [], [], {}
            n_images = len(batch["image"])
            for image, boxes, cls, p in zip(batch["image"], batch["boxes"], batch["labels"], batch["proposals"]):
                x = _prepare(encoder, image, device)
                with solver.autocast(device, cfg.precision):
                    feature = model.conv5(x)
                if model.rpn is not None:  # box decoding stays in float32
                    p, losses = _rpn_proposals(model, x, feature.float(), boxes)
                    for k, v in losses.items():
                        rpn_losses[k] = rpn_losses.get(k, 0.0) + v / n_images
                s = sample_rois(p.cpu(), boxes, cls, rois=rois_per_image, fg_fraction=t.fg_fraction,
                                fg_iou=t.fg_iou, bg_iou=(t.bg_iou_low, t.bg_iou_high), stds=cfg.bbox_stds,
                                generator=gen)
                if len(s.rois):
                    pooled.append(model.roi_features(feature, s.rois.to(device)))
                    labels.append(s.labels)
                    targets.append(s.targets)
            if not pooled:
                continue
            with solver.autocast(device, cfg.precision):
                scores, deltas = model.head(torch.cat(pooled))
            all_labels = torch.cat(labels).to(device)
            loss_cls, loss_box = detection_loss(scores.float(), deltas.float(), all_labels,
                                                torch.cat(targets).to(device))
            loss = loss_cls + loss_box + sum(rpn_losses.values())
            solver.check_finite(loss, it, "detection")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = solver.clip_gradients(params, o.clip_gradients)
            optimizer.step()
            parts = {"loss": loss.item(), "loss_cls": loss_cls.item(), "loss_box": loss_box.item(),
                     **{k: float(v.item()) for k, v in rpn_losses.items()}, "grad_norm": grad_norm,
                     "rois": float(len(all_labels)), "fg_fraction": float((all_labels > 0).float().mean())}
            for k, v in parts.items():
                window.setdefault(k, []).append(v)
            if (it + 1) % max(cfg.log_every, 1) == 0 or it + 1 == o.iterations:
                record = {"iteration": it + 1, "lr": lr, **{k: float(np.mean(v)) for k, v in window.items()}}
                history.append(record)
                window = {}
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if t.checkpoint_every and (it + 1) % t.checkpoint_every == 0 and it + 1 < o.iterations:
                atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "iteration": it + 1, "history": history,
                                   "settings": {"optim": to_dict(o), "train": to_dict(t), "encoder": cfg.encoder,
                                                "input_mode": cfg.input_mode}}, ckpt)
    finally:
        bar.close()
    return {"iterations": o.iterations, "resumed_from": start, "images": len(keep),
            "param_groups": solver.describe_param_groups(optimizer),
            "images_without_objects": len(data.voc) - len(keep), "frozen": frozen, "history": history,
            "seconds": time.perf_counter() - t0, "skipped": counter.summary()}


# --------------------------------------------------------------------------------------------------------------
# Testing


def postprocess(boxes: torch.Tensor, prob: torch.Tensor, *, score_thresh: float, nms: float,
                max_per_image: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fast R-CNN's test-time selection for one image. ``boxes``: R x (K + 1) x 4 class-specific boxes (continuous
    corners), ``prob``: R x (K + 1) softmax scores (column 0 = background). Per class k = 1 ... K: keep scores
    above ``score_thresh`` and boxes at least 1 px wide and high, then greedy non-maximum suppression (a box is
    dropped when its IoU with a higher-scored kept box exceeds ``nms``); finally keep only the
    ``max_per_image`` highest scores over all classes. Returns K (boxes, scores) pairs, highest score first."""
    from torchvision.ops import nms as nms_op, remove_small_boxes

    per_class: list[tuple[torch.Tensor, torch.Tensor]] = []
    for c in range(1, prob.shape[1]):
        keep = torch.nonzero(prob[:, c] > score_thresh).flatten()
        b, s = boxes[keep, c], prob[keep, c]
        ok = remove_small_boxes(b, 1.0)
        b, s = b[ok], s[ok]
        ok = nms_op(b, s, nms)
        per_class.append((b[ok], s[ok]))
    all_scores = torch.cat([s for _, s in per_class])
    if len(all_scores) > max_per_image:
        thresh = torch.topk(all_scores, max_per_image).values[-1]
        per_class = [(b[s >= thresh], s[s >= thresh]) for b, s in per_class]
    return per_class


@torch.no_grad()
def detect_image(model: FastRCNN, encoder: Encoder, item: dict, cfg: Config,
                 device: torch.device) -> list[tuple[np.ndarray, np.ndarray]]:
    """Detections of one test item, per VOC class: (boxes K x 4 continuous corners in the original image,
    scores K), selected by :func:`postprocess`."""
    x = _prepare(encoder, item["image"], device)
    with solver.autocast(device, cfg.precision):
        feature = model.conv5(x)
    p = item["proposals"].to(device)
    if model.rpn is not None:
        p, _ = _rpn_proposals(model, x, feature.float(), None)
    if len(p) == 0:
        return [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in range(model.num_classes)]
    pooled = model.roi_features(feature, p)
    with solver.autocast(device, cfg.precision):
        scores, deltas = model.head(pooled)
    prob = F.softmax(scores.float(), dim=1)
    w, h = item["size"]
    boxes = clip_boxes(decode_boxes(p.float(), deltas.float(), cfg.bbox_stds) / item["scale"], w, h)
    per_class = postprocess(boxes, prob, score_thresh=cfg.test.score_thresh, nms=cfg.test.nms,
                            max_per_image=cfg.test.max_per_image)
    return [(b.cpu().numpy(), s.cpu().numpy()) for b, s in per_class]


def write_results(folder: Path, split: str, detections: dict[str, list[tuple[str, float, np.ndarray]]],
                  comp: str = "comp4") -> list[Path]:
    """The devkit's result files, one per class (every class gets one, possibly empty):
    ``<comp>_det_<split>_<class>.txt`` with lines ``image_id score xmin ymin xmax ymax``; continuous corners
    become the devkit's 1-based pixel-inclusive coordinates ``(x1 + 1, y1 + 1, x2, y2)``."""
    paths = []
    for cls in VOC_CLASSES:
        lines = []
        for image_id, score, box in detections.get(cls, []):
            x1, y1, x2, y2 = (float(v) for v in box)
            lines.append(f"{image_id} {score:.6f} {x1 + 1:.1f} {y1 + 1:.1f} {max(x2, x1 + 1):.1f} "
                         f"{max(y2, y1 + 1):.1f}\n")
        path = folder / f"{comp}_det_{split}_{cls}.txt"
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def evaluate_results(voc: str | os.PathLike, year: str, split: str, folder: Path, *, inclusive: bool = True,
                     comp: str = "comp4", bootstrap: BootstrapConfig = BootstrapConfig()) -> dict[str, Any]:
    """Score result files as :func:`xchannel.metrics.voc_det_cli.score_result_files`, the very function of
    ``xchannel evaluate voc-det``, does: per-class AP and mAP in %, VOC07 11-point AP, difficult objects ignored,
    the ground truth read as the devkit reads it. ``inclusive``: a detection matches at IoU >= 0.5
    (``VOCevaldet.m``, the default of both) rather than > 0.5 (py-faster-rcnn's port); both mAPs are recorded
    (they differ only for overlaps of exactly 0.5). ``map_ci``: the headline mAP's bootstrap interval over the
    test images (:func:`xchannel.metrics.uncertainty.detection_map_interval`)."""
    from xchannel.metrics.voc_det_cli import read_scoring_inputs

    dets, image_ids, annotations = read_scoring_inputs(voc, year, split, folder, comp=comp)
    scored = {rule: voc_det_eval(annotations, dets, VOC_CLASSES, inclusive=incl, metric="voc07")
              for rule, incl in (("devkit", True), ("strict", False))}
    main = scored["devkit" if inclusive else "strict"]
    interval = detection_map_interval(annotations, dets, VOC_CLASSES, inclusive=inclusive, metric="voc07",
                                      config=bootstrap, expected=100.0 * main.map)
    return {"map": 100.0 * main.map, "ap": {c: 100.0 * a for c, a in main.ap.items()}, "npos": main.npos,
            "match": "IoU >= 0.5" if inclusive else "IoU > 0.5",
            "map_iou_ge": 100.0 * scored["devkit"].map, "map_iou_gt": 100.0 * scored["strict"].map,
            "map_ci": interval.to_dict(),
            "metric": "VOC07 11-point AP (%), difficult objects ignored",
            "detections": {c: len(d.scores) for c, d in dets.items()}, "images": len(image_ids)}


def _test(cfg: Config, model: FastRCNN, encoder: Encoder, data: "DetectionImages", device: torch.device,
          files: Path) -> dict[str, Any]:
    from tqdm import tqdm

    model.eval()
    loader = DataLoader(data, batch_size=1, num_workers=cfg.workers, collate_fn=collate_skip_lists)
    counter = SkipCounter()
    detections: dict[str, list[tuple[str, float, np.ndarray]]] = {c: [] for c in VOC_CLASSES}
    t0 = time.perf_counter()
    for batch in tqdm(loader, desc="testing", unit="img", disable=not cfg.progress or None, file=sys.stderr):
        if counter.update(batch) == 0:
            continue
        item = {k: v[0] for k, v in batch.items() if k != "skipped"}
        for c, (boxes, scores) in zip(VOC_CLASSES, detect_image(model, encoder, item, cfg, device)):
            detections[c].extend((item["id"], float(s), b) for b, s in zip(boxes, scores))
    seconds = time.perf_counter() - t0
    folder = files / "results"
    write_results(folder, cfg.test_split, detections)
    metrics = evaluate_results(cfg.voc, cfg.year, cfg.test_split, folder, inclusive=cfg.inclusive_iou,
                               bootstrap=cfg.bootstrap)
    return {"metrics": metrics, "results_dir": str(folder), "seconds": seconds, "skipped": counter.summary()}


# --------------------------------------------------------------------------------------------------------------
# The task


def protocol(cfg: Config) -> dict[str, Any]:
    """The protocol facts recorded in the result (what the number means)."""
    o, t, s = cfg.optim, cfg.train, cfg.test
    return {
        "name": "Fast R-CNN (Girshick 2015) fine-tuning, following Krähenbühl et al. 2016 (the paper's Table 2)",
        "train": f"VOC{cfg.year} {cfg.train_split}", "test": f"VOC{cfg.year} {cfg.test_split}",
        "roi_pool": f"{POOL_SIZE}x{POOL_SIZE} max at 1/{FEATURE_STRIDE} (conv5)",
        "minibatch": f"{o.batch_size} images, {t.rois_per_batch} RoIs, {100 * t.fg_fraction:g}% foreground "
                     f"(IoU >= {t.fg_iou}), background IoU in [{t.bg_iou_low}, {t.bg_iou_high}), ground truth "
                     f"added, difficult objects excluded",
        "scales": {"train": list(t.scales), "train_max_size": t.max_size, "test": s.scale,
                   "test_max_size": s.max_size, "mirror": t.mirror},
        "solver": o.describe(),
        "solver_source": "Fast R-CNN's CaffeNet solver; 150k iterations stepped every 50k for non-ImageNet "
                         "initialisations after Krähenbühl et al. 2016 / Doersch et al. 2015 (unverified here; see "
                         "xchannel.pascal.detection.config)",
        "bbox_regression": {"means": list(BBOX_MEANS), "stds": list(cfg.bbox_stds), "loss": "smooth L1, beta 1"},
        "test": {"nms": s.nms, "score_thresh": s.score_thresh, "max_per_image": s.max_per_image},
        "proposals": {"method": cfg.proposals.method, "selective_search": to_dict(cfg.proposals.selective_search),
                      "min_size": cfg.proposals.min_size, "max_proposals": cfg.proposals.max_proposals},
        "precision": cfg.precision,
        "metric": "VOC07 11-point mAP (%), difficult objects ignored",
    }


def output_paths(cfg: Config, encoder_name: str, input_mode: str) -> tuple[Path, Path]:
    """(result JSON, folder of the run's files: ``results/``, ``detector.pt``, ``checkpoint.pt``)."""
    out = Path(cfg.out) if cfg.out else default_output("detection", encoder_name, input_mode)
    return out, out.with_suffix("") if out.suffix == ".json" else out.with_name(out.name + "_files")


def run_task(cfg: Config, prepared: PreparedEncoder | None = None) -> dict[str, Any]:
    """Fine-tune Fast R-CNN on ``train_split`` and test on ``test_split`` (see the module docstring); writes the
    result JSON (returned) and the run's files. ``prepared``: an encoder already prepared with
    :func:`~xchannel.pascal.prepare.prepare_encoder` (``cfg.encoder`` is then only recorded); it is fine-tuned in
    place."""
    cfg.validate()
    t_start = time.perf_counter()
    device = solver.resolve_device(cfg.device)
    cfg, precision = solver.resolve_precision(cfg, device)
    torch.manual_seed(cfg.seed)
    train_voc = VOCDetection(cfg.voc, cfg.year, cfg.train_split, clip_boxes=cfg.clip_boxes)
    # the test split's boxes serve only the proposals' recall statistic (clipped is fine); its score reads the XML
    # files as the devkit does (evaluate_results), so boxes an annotation tool wrote never stop the test
    test_voc = VOCDetection(cfg.voc, cfg.year, cfg.test_split, clip_boxes=True)
    for voc in (train_voc, test_voc):
        if len(voc) == 0:
            raise UserError(f"{voc.voc_root / 'ImageSets' / 'Main' / f'{voc.split}.txt'}: the image set is empty")
    if prepared is None:
        prepared = prepare_encoder(cfg.encoder, cfg.input_mode, voc_root=cfg.voc, year=cfg.year,
                                   split=cfg.train_split, rescale=cfg.rescale, seed=cfg.seed,
                                   ab_branch=cfg.ab_branch, dropout=cfg.dropout, device=device)
    encoder, trunk = prepared.encoder, prepared.trunk
    rpn = build_rpn(trunk.conv_dim or 0, cfg.proposals) if cfg.proposals.method == "rpn" else None
    model = FastRCNN(trunk, len(VOC_CLASSES), cfg.dropout, rpn, seed=cfg.seed).to(device)
    out, files = output_paths(cfg, prepared.record.get("name", "encoder"), encoder.input_mode)

    p = cfg.proposals
    train_props, train_info = proposals_for(cfg, train_voc, "train")
    test_props, test_info = proposals_for(cfg, test_voc, "test")
    if p.method == "selective_search":  # each split's boxes in R-CNN's release format, reusable as a file
        for voc, boxes, info in ((train_voc, train_props, train_info), (test_voc, test_props, test_info)):
            mat = files / "selective_search_data" / f"voc_{cfg.year}_{voc.split}.mat"
            props.save_rcnn_mat(mat, voc.ids, boxes)
            info["rcnn_file"] = str(mat)
    if test_props is not None:
        test_info["quality"] = proposal_recall(test_voc, test_props, p.min_size, p.max_proposals)
    train_data = DetectionImages(train_voc, train_props, train=True, scale=cfg.train.scales[0],
                                 max_size=cfg.train.max_size, min_size=p.min_size, max_proposals=p.max_proposals)
    test_data = DetectionImages(test_voc, test_props, train=False, scale=cfg.test.scale,
                                max_size=cfg.test.max_size, min_size=p.min_size, max_proposals=p.max_proposals)
    files.mkdir(parents=True, exist_ok=True)
    training = _train(cfg, model, trunk, encoder, train_data, device, files)
    if cfg.save_model:
        atomic_torch_save({"model": model.state_dict(), "config": to_dict(cfg), "classes": list(VOC_CLASSES),
                           "encoder": prepared.record}, files / "detector.pt")
    (files / "checkpoint.pt").unlink(missing_ok=True)
    testing = _test(cfg, model, encoder, test_data, device, files)
    metrics = testing.pop("metrics")
    history = training.pop("history")
    record = result_record(
        task="detection", column="det", cfg=cfg, prepared=prepared,
        protocol={**protocol(cfg), "precision": precision}, metrics=metrics,
        headline={"metric": "mAP", "value": metrics["map"], "uncertainty": metrics["map_ci"],
                  "label": f"VOC07 11-point mAP {metrics['map']:.1f}% ({metrics['match']})"},
        data={"name": dataset_name(cfg.voc), "voc": str(cfg.voc), "year": cfg.year,
              "train": {"split": cfg.train_split, "images": len(train_voc)},
              "test": {"split": cfg.test_split, "images": len(test_voc)}},
        history=history,
        timing={"seconds": time.perf_counter() - t_start, "train_seconds": training["seconds"],
                "test_seconds": testing["seconds"]},
        training=training, testing=testing, proposals={"train": train_info, "test": test_info},
        files={"results": str(files / "results"), "detector": str(files / "detector.pt") if cfg.save_model else None},
    )
    if p.method != "selective_search":  # Table 2's detection protocol uses selective search: another row
        record["row"]["variant"] = "RPN proposals" if p.method == "rpn" else "proposals from a file"
    write_result(out, record)
    return record


__all__ = ["detect_image", "detection_loss", "evaluate_results", "output_paths", "postprocess", "protocol",
           "run_task", "write_results"]
