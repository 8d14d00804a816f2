"""The PASCAL benchmarks of the paper's Table 2 (Sec. 3.2): fine-tuning an encoder on PASCAL VOC.

* :mod:`xchannel.pascal.classification`: VOC2007 multi-label classification, fine-tuning fc8 only, fc6-fc8 or all
  layers (Krähenbühl et al.'s protocol, as the paper follows Donahue et al. [16]); scored with the scikit-learn AP
  of that protocol and with the VOC2007 devkit's 11-point AP.
* :mod:`xchannel.pascal.detection`: Fast R-CNN on VOC2007 (VOC07 11-point mAP).
* :mod:`xchannel.pascal.segmentation`: FCN-32s trained on SBD and scored on VOC2011 seg11valid, as the authors did
  (mean IU over 21 classes, pixel accuracy).

What the tasks share, one job per module: :mod:`~xchannel.pascal.config` (the shared ``FinetuneConfig``, the one
solver description ``CaffeSolver``, presets and the common flags), :mod:`~xchannel.pascal.trunk` (the ``Trunk``
an encoder is cut into), :mod:`~xchannel.pascal.encoder_cut` (the cut itself), :mod:`~xchannel.pascal.prepare`
(loading, Krähenbühl et al.'s data-dependent rescaling, gray / color input), :mod:`~xchannel.pascal.solver`
(Caffe-style parameter groups, learning-rate policy, freezing), :mod:`~xchannel.pascal.record` (the result every
task writes), :mod:`~xchannel.pascal.proposals` (selective search and proposal files);
:mod:`xchannel.pascal.demo` is the demo's PASCAL stage (all tasks on the embedded data set, then Table 2).

Every task module exposes the same interface: a ``Config`` dataclass, ``PRESETS``, ``config(preset, overrides,
**fields)``, ``add_arguments(parser)``, ``run(args)`` and ``run_task(cfg) -> result dict``; ``xchannel pascal
cls|det|seg`` dispatches to them through :data:`TASK_MODULES`.
"""

#: Task name -> module implementing it.
TASK_MODULES: dict[str, str] = {
    "cls": "xchannel.pascal.classification",
    "seg": "xchannel.pascal.segmentation",
    "det": "xchannel.pascal.detection",
}
