"""Colorization quality (Sec. 3.1 of the paper): Table 1 and Fig. 4.

* :mod:`xchannel.evaluation.colorization`: ``xchannel evaluate colorization``: AuC (raw and class-rebalanced), the
  fixed classifier's top-1 accuracy on colorized images, model cost, for any colorizer and the Gray / Random
  baselines, beside the paper's numbers.
* :mod:`xchannel.evaluation.classifier`: the fixed classifier (VGG-16 from a weights file, or the embedded data
  set's small CNN).
* :mod:`xchannel.evaluation.temperature`: ``xchannel evaluate temperature-grid``: the annealed-mean decodings of
  Fig. 4 at T = 1, 0.77, 0.58, 0.38, 0.29, 0.14 and -> 0.
* :mod:`xchannel.evaluation.demo`: the demo's ``table1`` stage.
"""
