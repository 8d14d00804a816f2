"""PASCAL VOC2007 detection with Fast R-CNN on a pre-trained encoder (the "Detection" column of Table 2).

The paper "test[s] detection on PASCAL VOC 2007, using Fast R-CNN [41], following the procedure in [36]"
(Sec. 3.2; [41] Girshick, ICCV 2015; [36] Krähenbühl et al., ICLR 2016) after rescaling the layers "so they
'learn' at the same rate", and reports 46.9 % mAP with gray input and 47.9 % with color input (conv1's ab weights
initialised to zero), against 45.6 % for the k-means baseline and 56.8 % for ImageNet pre-training. This module
implements that protocol on torchvision ops.

Encoder
-------
:func:`xchannel.pascal.prepare.prepare_encoder` loads any encoder spec in the requested input mode, folds our
AlexNet's BatchNorm, initialises ``kmeans`` encoders and applies Krähenbühl et al.'s data-dependent rescaling
(``rescale.enabled``, on by default as for Table 2). Fast R-CNN reuses its conv1-conv5 and fc6/fc7; encoders
without fc6/fc7 (timm networks, the VGG colorizer) are refused.

Network (Fast R-CNN with a CaffeNet-style encoder)
--------------------------------------------------
* **Trunk**: conv1-conv5 of the encoder's AlexNet on the whole image, at any size. The max pools round up as
  Caffe's do (``ceil_mode``), so conv5 covers the whole image; conv5 has stride 16. Images smaller than the
  trunk's receptive field are padded (bottom/right, mid-gray) up to :data:`MIN_INPUT` pixels.
* **RoI pooling**: ``torchvision.ops.roi_pool`` to 6 x 6 at spatial scale 1/16 (Caffe's RoI max pooling: the
  box is rounded to conv5 cells with pixel-inclusive corners, so we pass ``x2 - 1, y2 - 1`` of our continuous
  boxes).
* **Head**: the encoder's own fc6 (a ``Linear`` over the flattened 6 x 6 x C RoI features, exactly as over pool5
  of a 227 px crop) and fc7, with their ReLUs and dropout 0.5 after each (CaffeNet's drop6 / drop7; torchvision's
  AlexNet keeps its own dropouts, before fc6 and fc7, and gets drop7 after fc7), then a (K + 1)-way classifier
  ``cls_score`` (initialised N(0, 0.01)) and class-specific box regression ``bbox_pred`` with 4 (K + 1) outputs
  (N(0, 0.001)), K = 20.

Box regression (:func:`encode_boxes`, :func:`decode_boxes`)
-----------------------------------------------------------
With a proposal of width w_p, height h_p, centre (x_p, y_p) and its ground-truth box (w_g, h_g, x_g, y_g)
(continuous corners, so w = x2 - x1, the same widths as Fast R-CNN's pixel-inclusive ``x2 - x1 + 1``):
t = ((x_g - x_p) / w_p, (y_g - y_p) / h_p, log(w_g / w_p), log(h_g / h_p)), normalised as (t - mean) / std with
means (0, 0, 0, 0) and stds (0.1, 0.1, 0.2, 0.2) (Fast R-CNN's ``BBOX_NORMALIZE_STDS``). Decoding inverts this,
clamping the log-scales at log(1000 / 16). The loss is smooth L1 (beta = 1) on the ground-truth class's four
outputs of the foreground RoIs, summed and divided by the number of RoIs in the batch, added with weight 1 to the
softmax cross-entropy over all RoIs.

Training (Fast R-CNN's protocol)
--------------------------------
Minibatches of 2 images and 128 RoIs (64 per image, :func:`~.boxes.sample_rois`): up to 25 % foreground,
proposals with IoU >= 0.5 to a ground-truth box (labelled with that box's class), the rest background, IoU in
[0.1, 0.5); the ground-truth boxes join the proposals. Difficult objects are excluded from training (neither
foreground nor a target), and images without a non-difficult object are left out. Multi-scale training: each
image's shorter side is drawn from ``train.scales`` (default 480, 576, 688; the longer side capped at
``train.max_size``), and the image is mirrored with probability 1/2. SGD with momentum 0.9 and weight decay 5e-4
(none on biases, whose learning rate is doubled, as in Fast R-CNN's Caffe solver); learning rate 1e-3, divided by
10 every 50k iterations, 150k iterations: the longer schedule of the procedure the paper follows for
non-ImageNet initialisations (:mod:`xchannel.pascal.detection.config` says where the numbers come from and that
they are unverified; ``--preset imagenet`` is Fast R-CNN's 40k schedule). All layers are fine-tuned
(``train.frozen`` lists layer groups to keep fixed). Ground-truth boxes that start at 0 or reach past the image
stop the run with an error naming the file; ``--clip-boxes`` clips them instead. Images are read as stored (EXIF
orientation not applied, as the devkit reads them) and must have their annotation's ``<size>``.

Testing: single scale (shorter side 600, longer at most 1000). Per class, the boxes decoded from that class's
regression outputs are clipped to the image and scored with the softmax probability; those above
``test.score_thresh`` go through non-maximum suppression at IoU 0.3; at most 100 detections per image remain
over all classes. They are written as the standard ``comp4_det_<split>_<class>.txt`` files (VOC 1-based pixel
coordinates) and scored by the very function of ``xchannel evaluate voc-det``
(:func:`xchannel.metrics.voc_det_cli.score_result_files`: VOC07 11-point AP, IoU >= 0.5 as ``VOCevaldet.m``,
difficult objects ignored).

Proposals (:class:`~.config.ProposalConfig`): R-CNN's selective search (fast mode, 500 px wide images; computed
once per image and cached, :mod:`xchannel.pascal.proposals`; each split's boxes are also written as R-CNN's
``voc_<year>_<split>.mat`` in the run's folder), per-split proposal files (``--proposal-files TRAIN TEST``, e.g.
R-CNN's released ``voc_2007_trainval.mat`` and ``voc_2007_test.mat``), or ``rpn``: torchvision's
:class:`~torchvision.models.detection.rpn.RegionProposalNetwork` with an ``AnchorGenerator`` on conv5 (3 sizes
x 3 aspect ratios), trained jointly with the detector; its proposals are constants for the RoI head
("approximate joint training" in Faster R-CNN's terms) and its losses are added to the detector's.

Modules: :mod:`~.config` (configuration, presets), :mod:`~.boxes` (box arithmetic, RoI sampling),
:mod:`~.fast_rcnn` (the network), :mod:`~.data` (images, sampler, proposals), :mod:`~.task` (training, testing,
the result).

Outputs: the result JSON (``out``, default ``results/pascal/detection_<encoder>_<mode>.json``; the record of
:func:`xchannel.pascal.record.result_record`) and, in the folder of the same name without ``.json``, the result
files (``results/``), the fine-tuned detector (``detector.pt``) and, during training, ``checkpoint.pt``
(``--resume`` continues from it).
"""

from __future__ import annotations

import argparse

from xchannel.data.voc import VOC_CLASSES
from xchannel.pascal.config import add_clip_boxes_argument, add_common_arguments, add_preset_argument, config_from_args
from xchannel.pascal.detection.boxes import (BBOX_MEANS, BBOX_STDS, RoiSample, clip_boxes, decode_boxes, encode_boxes,
                                             sample_rois, scale_for)
from xchannel.pascal.detection.config import (PRESETS, Config, ProposalConfig, TestConfig, TrainConfig, config,
                                              reference_solver)
from xchannel.pascal.detection.data import DetectionImages, TrainBatches, proposal_recall, proposals_for
from xchannel.pascal.detection.fast_rcnn import FastRCNN, build_rpn, conv5_stages
from xchannel.pascal.detection.task import (detect_image, detection_loss, evaluate_results, output_paths,
                                            postprocess, protocol, run_task, write_results)

NAME = "det"
HELP = "VOC2007 detection with Fast R-CNN (% mAP, VOC07 11-point)"
DESCRIPTION = """\
Fine-tune Fast R-CNN on an encoder (VOC2007 trainval -> test) as Table 2 of the paper, following Krähenbühl et
al.: conv1-conv5 of the encoder, RoI pooling 6x6, its fc6/fc7, (20+1)-way classification and class-specific box
regression; 2 images and 128 RoIs per minibatch, 25% foreground; multi-scale training (480/576/688), single-scale
testing (600), NMS 0.3; SGD lr 1e-3 (x0.1 every 50k), 150k iterations (--preset imagenet: Fast R-CNN's 40k).
Proposals: R-CNN's selective search (fast mode, images 500 px wide; computed once per image and cached), per-split
proposal files (R-CNN's voc_2007_trainval.mat and voc_2007_test.mat), or a jointly trained RPN. Writes the
comp4_det_test_<class> result files and scores them as `xchannel evaluate voc-det` does (VOC07 11-point mAP,
IoU >= 0.5, difficult ignored).

  xchannel pascal det runs/alexnet/ckpt_00450000.pt --voc VOCdevkit --input-mode color
  xchannel pascal det kmeans --voc data/VOCdevkit --preset demo
  xchannel pascal det gaussian --voc VOCdevkit --proposal-files voc_2007_trainval.mat voc_2007_test.mat"""

#: Detection's own flags: argparse attribute -> config key.
_FLAGS = {"proposals": "proposals.method", "clip_boxes": "clip_boxes", "resume": "resume"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_preset_argument(parser, PRESETS)
    add_clip_boxes_argument(parser)
    parser.add_argument("--proposals", choices=("selective_search", "file", "rpn"),
                        help="proposal method (default: selective_search)")
    parser.add_argument("--proposal-files", nargs=2, metavar=("TRAIN", "TEST"),
                        help="proposals of the training split and of the test split (.mat in R-CNN's release "
                             "format, .npz or .pt; see xchannel.pascal.proposals); implies --proposals file")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue an interrupted training from the run's checkpoint.pt")


def config_from(args: argparse.Namespace) -> Config:
    """Defaults <- ``--preset`` <- ``--config`` YAML <- flags <- ``--set``
    (:func:`xchannel.pascal.config.config_from_args`)."""
    cfg = config_from_args(Config, args, _FLAGS, PRESETS)
    if getattr(args, "proposal_files", None):
        cfg.proposals.method = "file"
        cfg.proposals.train_file, cfg.proposals.test_file = (str(f) for f in args.proposal_files)
    return cfg


def run(args: argparse.Namespace) -> int:
    result = run_task(config_from(args))
    m = result["metrics"]
    print(f"VOC{result['config']['year']} {result['config']['test_split']} detection on {result['data']['name']} "
          f"data, encoder {result['row']['encoder']}, input {result['row']['input_mode']}: mAP {m['map']:.1f}% "
          f"({m['match']})")
    width = max(len(c) for c in VOC_CLASSES) + 2
    for c in VOC_CLASSES:
        print(f"  {c:<{width}}{m['ap'][c]:6.1f}")
    print(f"result: {result['output']}")
    return 0


__all__ = ["BBOX_MEANS", "BBOX_STDS", "Config", "DetectionImages", "FastRCNN", "PRESETS", "ProposalConfig",
           "RoiSample", "TestConfig", "TrainBatches", "TrainConfig", "add_arguments", "build_rpn", "clip_boxes",
           "config", "config_from", "conv5_stages", "decode_boxes", "detect_image", "detection_loss",
           "encode_boxes", "evaluate_results", "output_paths", "postprocess", "proposal_recall", "proposals_for",
           "protocol", "reference_solver", "run", "run_task", "sample_rois", "scale_for", "write_results"]
