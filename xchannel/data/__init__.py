"""xchannel's data layer: robust image decoding, ImageFolder / image-list / PASCAL VOC data sets, and the embedded
procedural data set (:mod:`xchannel.data.synthetic`, ``xchannel make-data``)."""

from xchannel.data.images import (
    DEFAULT_MAX_PIXELS,
    BadImageError,
    ImageFolderDataset,
    ImageListDataset,
    ImageSamples,
    RandomCropMirror,
    ResizeCenterCrop,
    SkipCollate,
    SkipCounter,
    Skipped,
    ToTensor,
    batch_size,
    collate_skip,
    collate_skip_lists,
    is_grayscale,
    list_collate,
    load_rgb,
    read_image_list,
)
from xchannel.data.voc import (
    VOC_CLASSES,
    VOCClassification,
    VOCDetection,
    VOCSegmentation,
    PairedCropMirror,
    boxes_to_xyxy,
    image_labels,
    load_mask,
    read_annotation,
    read_class_labels,
    read_image_set,
)
from xchannel.data.synthetic import SHAPE_CLASSES, SyntheticSpec, make_dataset

__all__ = [
    "DEFAULT_MAX_PIXELS", "BadImageError", "ImageFolderDataset", "ImageListDataset", "ImageSamples",
    "RandomCropMirror", "ResizeCenterCrop", "SkipCollate", "SkipCounter", "Skipped", "ToTensor", "batch_size",
    "collate_skip", "collate_skip_lists", "is_grayscale", "list_collate", "load_rgb", "read_image_list",
    "VOC_CLASSES", "VOCClassification", "VOCDetection", "VOCSegmentation", "PairedCropMirror", "boxes_to_xyxy",
    "image_labels", "load_mask", "read_annotation", "read_class_labels", "read_image_set",
    "SHAPE_CLASSES", "SyntheticSpec", "make_dataset",
]
