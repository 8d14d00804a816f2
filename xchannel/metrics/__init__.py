"""Benchmark metrics: PASCAL VOC classification/detection AP and segmentation IU (and colorization scores), and
their uncertainty (:mod:`xchannel.metrics.uncertainty`: bootstrap intervals over test images, chance levels).

Each submodule holds one benchmark's scoring code; the public functions are re-exported here.
"""

from xchannel.metrics.colorization import AbAucMeter, ab_auc
from xchannel.metrics.voc import (
    VOC_CLASSES,
    ClassDetections,
    DetectionAP,
    GroundTruth,
    VOCDetectionResult,
    mean_ap,
    voc07_11point_ap,
    voc12_ap,
    voc_box_iou,
    voc_cls_ap,
    voc_cls_map,
    voc_det_ap,
    voc_det_eval,
)
from xchannel.metrics.segmentation import (
    ConfusionMatrix,
    SegmentationScores,
    confusion_matrix,
    mean_class_accuracy,
    mean_iu,
    pixel_accuracy,
    segmentation_scores,
)
from xchannel.metrics.uncertainty import (
    BootstrapConfig,
    Interval,
    accuracy_difference_interval,
    accuracy_interval,
    chance_accuracy,
    chance_map,
    classification_map_interval,
    detection_map_interval,
    segmentation_miu_interval,
    separation,
)
