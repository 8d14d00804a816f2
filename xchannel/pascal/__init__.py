"""The PASCAL benchmarks of the paper's Table 2 (Sec. 3.2): fine-tuning an encoder on PASCAL VOC.

* :mod:`xchannel.pascal.classification`: VOC2007 multi-label classification, fine-tuning fc8 only, fc6-fc8 or all
  layers (Krähenbühl et al.'s protocol, as the paper follows Donahue et al. [16]); scored with the scikit-learn AP
  of that protocol and with the VOC2007 devkit's 11-point AP.
* :mod:`xchannel.pascal.detection`: Fast R-CNN on VOC2007 (VOC07 11-point mAP).
* :mod:`xchannel.pascal.segmentation`: FCN-32s on VOC2012 (mean IU over 21 classes, pixel accuracy).
* :mod:`xchannel.pascal.common`: what the tasks share: encoders cut for fine-tuning (:class:`~.common.Trunk`),
  Krähenbühl et al.'s data-dependent rescaling, gray / color input, Caffe-style learning-rate policy and
  freezing, and the result record every task writes.
* :mod:`xchannel.pascal.demo`: the demo's PASCAL stage (all tasks on the embedded data set, then Table 2).

Every task module exposes the same interface: a ``Config`` dataclass, ``add_arguments(parser)``, ``run(args)``
and ``run_task(cfg) -> result dict``; ``xchannel pascal cls|det|seg`` dispatches to them.
"""
