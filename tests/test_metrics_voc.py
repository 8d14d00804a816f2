"""PASCAL VOC metrics: classification AP, detection AP (devkit protocol), segmentation IU, ``evaluate voc-det``.

Every expected number below is worked out by hand in the comments (ranked lists, cumulative precision and
recall, the 11 thresholds), so a wrong implementation cannot agree with a wrong reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from xchannel.cli import main
from xchannel.metrics import (
    ClassDetections,
    ConfusionMatrix,
    GroundTruth,
    confusion_matrix,
    mean_class_accuracy,
    mean_iu,
    pixel_accuracy,
    segmentation_scores,
    voc07_11point_ap,
    voc12_ap,
    voc_box_iou,
    voc_cls_ap,
    voc_cls_map,
    voc_det_ap,
)
from xchannel.metrics.voc import VOC07_RECALL_THRESHOLDS, VOC_CLASSES

# ------------------------------------------------------------------------------------------------------------
# Classification AP
# ------------------------------------------------------------------------------------------------------------


def test_11point_and_area_ap_of_a_hand_ranked_list_with_difficult_images_ignored():
    # Ranked (by score) non-difficult labels P N P N P, npos = 3:
    #   rec  = 1/3, 1/3, 2/3, 2/3, 1      prec = 1, 1/2, 2/3, 1/2, 3/5
    # 11-point: t = 0, .1, .2, .3 -> 1;  t = .4, .5, .6 -> 2/3;  t = .7, .8, .9, 1 -> 3/5
    #   AP07 = (4 * 1 + 3 * 2/3 + 4 * 3/5) / 11 = 8.4 / 11
    # Area (VOC2010+) and scikit-learn: 1/3 * (1 + 2/3 + 3/5) = 34/45.
    # Two difficult images (label 0), one ranked first and one in the middle, must change nothing.
    scores = np.array([0.99, 0.9, 0.8, 0.7, 0.65, 0.6, 0.5])
    labels = np.array([0, 1, -1, 1, 0, -1, 1])
    assert voc_cls_ap(scores, labels, "voc07")[0] == pytest.approx(8.4 / 11, abs=1e-12)
    assert voc_cls_ap(scores, labels, "voc12")[0] == pytest.approx(34 / 45, abs=1e-12)
    assert voc_cls_ap(scores, labels, "sklearn")[0] == pytest.approx(34 / 45, abs=1e-12)
    # The same curve through the low-level functions.
    rec = np.array([1, 1, 2, 2, 3]) / 3
    prec = np.array([1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    assert voc07_11point_ap(rec, prec) == pytest.approx(8.4 / 11, abs=1e-12)
    assert voc12_ap(rec, prec) == pytest.approx(34 / 45, abs=1e-12)


def test_11point_thresholds_are_matlabs_0_to_1_by_tenths_bit_for_bit():
    # MATLAB builds 0:0.1:1 from both ends: 0.3 is 3*0.1 (= 0.30000000000000004) but 0.6 is 1 - 4*0.1 (= 0.6),
    # whereas numpy.arange(0, 1.1, 0.1) has 0.6000000000000001.
    assert VOC07_RECALL_THRESHOLDS[3] == 3 * 0.1 != 0.3
    assert VOC07_RECALL_THRESHOLDS[6] == 0.6 != np.arange(0.0, 1.1, 0.1)[6]
    assert VOC07_RECALL_THRESHOLDS[9:] == (0.9, 1.0)
    # So a recall of exactly 3/5 reaches t = 0.6. Ranked P P P N N P P, npos = 5:
    #   rec = .2 .4 .6 .6 .6 .8 1; prec = 1 1 1 3/4 3/5 4/6 5/7
    #   devkit: t = 0 .. .6 -> 1 (7 thresholds), t = .7 .. 1 -> 5/7 (4): AP = (7 + 20/7) / 11 = 69/77
    #   (an arange port would give t = .6 -> 5/7 too: 67/77)
    labels = np.array([1, 1, 1, -1, -1, 1, 1])
    scores = -np.arange(7.0)
    assert voc_cls_ap(scores, labels, "voc07")[0] == pytest.approx(69 / 77, abs=1e-12)


def test_tied_scores_protocol_pessimistic_and_devkit_keeps_input_order():
    # Four images, all scored 0.5, two positive. The protocol lowers the positives by 1e-5 (ranking: the
    # negatives, then the positives); scikit-learn scores a group of tied positives at the precision reached
    # after the whole group, so AP = 2/4 = npos / N -- the pessimistic value, the same as without the offset.
    scores = np.full(4, 0.5)
    labels = np.array([1, -1, 1, -1])
    assert voc_cls_ap(scores, labels, "sklearn")[0] == pytest.approx(0.5, abs=1e-12)
    # The offset does reorder near-ties: a negative 5e-6 below a positive goes above it (AP 1 -> 1/2) ...
    assert average_precision_score([1, 0], [0.5, 0.5 - 5e-6]) == 1.0
    assert voc_cls_ap([0.5, 0.5 - 5e-6], [1, -1], "sklearn")[0] == pytest.approx(0.5, abs=1e-12)
    # ... and is 1e-5 on positives only (labels mapped to {0, 1} as in the reference code), not 1e-5 * (+-1):
    # a negative 1.5e-5 below a positive stays below it, so AP = 1 (with +-1 it would be 1/2).
    assert voc_cls_ap([0.5, 0.5 - 1.5e-5], [1, -1], "sklearn")[0] == pytest.approx(1.0, abs=1e-12)
    # The devkit's stable sort keeps file order: P N P N -> rec .5 .5 1 1, prec 1 1/2 2/3 1/2
    #   t = 0 .. .5 -> 1 (6), t = .6 .. 1 -> 2/3 (5): 28/33;  reversed order N P N P -> 1/2 everywhere.
    assert voc_cls_ap(scores, labels, "voc07")[0] == pytest.approx(28 / 33, abs=1e-12)
    assert voc_cls_ap(scores, labels[::-1], "voc07")[0] == pytest.approx(0.5, abs=1e-12)


def test_sklearn_protocol_equals_scikit_learn_on_non_difficult_images_per_class():
    rng = np.random.default_rng(0)
    n, c = 60, 3
    scores = rng.permutation(n * c).reshape(n, c) / (n * c)  # distinct, gaps >> 1e-5
    labels = rng.choice([-1, -1, 0, 1], size=(n, c))
    aps = voc_cls_ap(scores, labels, "sklearn")
    assert aps.shape == (c,)
    for k in range(c):
        keep = labels[:, k] != 0
        assert aps[k] == pytest.approx(average_precision_score(labels[keep, k] > 0, scores[keep, k]), abs=1e-12)
    assert voc_cls_map(scores, labels, "sklearn") == pytest.approx(aps.mean())
    with pytest.raises(ValueError, match="labels must be"):
        voc_cls_ap(scores, np.full((n, c), 2))


# ------------------------------------------------------------------------------------------------------------
# Detection AP
# ------------------------------------------------------------------------------------------------------------


def test_pixel_inclusive_overlap():
    # 10 x 5 box inside a 10 x 10 box: 50 / 100 = 0.5 exactly with +1 widths (36/81 without the +1).
    assert voc_box_iou((1, 1, 10, 5), np.array([[1, 1, 10, 10]]))[0] == 0.5
    # Boxes sharing one pixel column: 10 / (100 + 100 - 10).
    assert voc_box_iou((10, 1, 19, 10), np.array([[1, 1, 10, 10]]))[0] == pytest.approx(10 / 190)
    # Adjacent, no shared pixel: no overlap at all.
    assert voc_box_iou((11, 1, 20, 10), np.array([[1, 1, 10, 10]]))[0] == -np.inf


# Class "dog" on three images. npos = 3 (A1, A2, B2; B1 is difficult).
DOG_GT = {
    "a": GroundTruth(np.array([[1, 1, 10, 10], [21, 1, 30, 10]]), np.array([False, False])),  # A1, A2
    "b": GroundTruth(np.array([[1, 1, 10, 10], [41, 41, 60, 60]]), np.array([True, False])),  # B1 difficult, B2
    "c": GroundTruth(np.zeros((0, 4)), np.zeros(0, bool)),
}
DOG_DETS = [  # (image, score, box)
    ("a", 0.9, (1, 1, 10, 10)),    # d1: A1, IoU 1                      -> TP
    ("a", 0.8, (1, 1, 10, 10)),    # d2: A1 again                       -> FP (duplicate)
    ("b", 0.7, (1, 1, 10, 10)),    # d3: difficult B1                   -> ignored
    ("c", 0.6, (1, 1, 10, 10)),    # d4: no object in c                 -> FP
    ("a", 0.5, (21, 1, 30, 5)),    # d5: A2 at IoU exactly 0.5          -> FP if "> 0.5", TP if ">= 0.5"
    ("b", 0.4, (41, 41, 60, 60)),  # d6: B2                             -> TP
    ("b", 0.3, (1, 1, 10, 10)),    # d7: difficult B1 again             -> ignored
]
# Strict: ranked TP FP FP FP TP -> rec 1/3 1/3 1/3 1/3 2/3, prec 1 1/2 1/3 1/4 2/5
#   t = 0 .. .3 -> 1 (4 thresholds), t = .4 .5 .6 -> 2/5 (3), t = .7 .. 1 -> 0: AP = 5.2 / 11
# Inclusive: TP FP FP TP TP -> rec 1/3 1/3 1/3 2/3 1, prec 1 1/2 1/3 1/2 3/5
#   t = 0 .. .3 -> 1 (4), t = .4 .. 1 -> 3/5 (7): AP = 8.2 / 11
DOG_AP_STRICT, DOG_AP_INCLUSIVE = 5.2 / 11, 8.2 / 11


def _dets(rows) -> ClassDetections:
    return ClassDetections([r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))


def test_detection_ap_duplicates_difficult_and_the_half_overlap_boundary():
    res = voc_det_ap(_dets(DOG_DETS), DOG_GT, inclusive=False)
    assert res.npos == 3
    assert res.tp.tolist() == [True, False, False, False, True]  # d3 and d7 (difficult) are gone
    assert res.precision.tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 2 / 5])
    assert res.ap == pytest.approx(DOG_AP_STRICT, abs=1e-12)
    incl = voc_det_ap(_dets(DOG_DETS), DOG_GT)  # the devkit's >= is the default
    assert incl.tp.tolist() == [True, False, False, True, True]
    assert incl.ap == pytest.approx(DOG_AP_INCLUSIVE, abs=1e-12)
    # The order of lines in the file does not matter when confidences are distinct.
    assert voc_det_ap(_dets(DOG_DETS[::-1]), DOG_GT, inclusive=False).ap == pytest.approx(DOG_AP_STRICT, abs=1e-12)
    with pytest.raises(ValueError, match="unrecognized image 'zz'"):
        voc_det_ap(_dets([("zz", 1.0, (1, 1, 2, 2))]), DOG_GT)


def test_detection_claimed_best_match_is_a_false_positive_even_if_another_object_overlaps():
    # Two cats overlapping each other; the same box detected twice. Both detections' best object is G1
    # (IoU 1; G2 has 90/110). The devkit only looks at the best object: the second detection is a false
    # positive, not a match for G2. rec .5 .5, prec 1 .5: t = 0 .. .5 -> 1 (6 thresholds), rest 0: AP = 6/11.
    gt = {"d": GroundTruth(np.array([[1, 1, 10, 10], [2, 1, 11, 10]]), np.array([False, False]))}
    res = voc_det_ap(_dets([("d", 0.9, (1, 1, 10, 10)), ("d", 0.8, (1, 1, 10, 10))]), gt)
    assert res.tp.tolist() == [True, False]
    assert res.ap == pytest.approx(6 / 11, abs=1e-12)
    # VOC2010+ area: 1/2 * 1 = 0.5.
    assert voc_det_ap(_dets([("d", 0.9, (1, 1, 10, 10)), ("d", 0.8, (1, 1, 10, 10))]), gt,
                      metric="voc12").ap == pytest.approx(0.5, abs=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Segmentation
# ------------------------------------------------------------------------------------------------------------


def test_confusion_matrix_and_fcn_scores_on_a_known_example():
    # 3 classes; two pixels labelled 255 are not counted.
    target = torch.tensor([[0, 0, 0, 1], [1, 2, 255, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [2, 2, 0, 1]])
    hist = confusion_matrix(pred, target, num_classes=3)
    assert hist.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows: truth, columns: prediction
    # iu = diag / (row + col - diag) = 2/3, 1/3, 1/2 -> mean 1/2; pixel acc 4/6; class acc (2/3 + 1/2 + 1)/3
    assert mean_iu(hist) == pytest.approx(0.5)
    assert pixel_accuracy(hist) == pytest.approx(2 / 3)
    assert mean_class_accuracy(hist) == pytest.approx(13 / 18)
    s = segmentation_scores(hist)
    assert s.iu == pytest.approx((2 / 3, 1 / 3, 1 / 2))
    assert s.frequency_weighted_iu == pytest.approx(3 / 6 * 2 / 3 + 2 / 6 * 1 / 3 + 1 / 6 * 1 / 2)  # 19/36
    # Streaming over 21 classes, one row per batch: the 18 absent classes are NaN and left out of the mean.
    cm = ConfusionMatrix()
    cm.update(pred[:1], target[:1])
    cm.update(pred[1:], target[1:])
    assert cm.matrix[:3, :3].tolist() == hist.tolist() and int(cm.matrix.sum()) == 6
    assert cm.scores().mean_iu == pytest.approx(0.5)
    assert np.isnan(cm.scores().iu[20])
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, torch.full_like(target, 7), num_classes=3)


# ------------------------------------------------------------------------------------------------------------
# xchannel evaluate voc-det on a tiny VOCdevkit
# ------------------------------------------------------------------------------------------------------------

# Cats on image d, as in the "claimed best match" test: AP 6/11.
CAT_OBJECTS = {"d": [("cat", (1, 1, 10, 10), 0), ("cat", (2, 1, 11, 10), 0)]}
CAT_DETS = [("d", 0.9, (1, 1, 10, 10)), ("d", 0.8, (1, 1, 10, 10))]


def _write_xml(path: Path, image_id: str, objects) -> None:
    objs = "".join(
        f"""
    <object>
        <name>{name}</name>
        <pose>Unspecified</pose>
        <truncated>0</truncated>
        <difficult>{difficult}</difficult>
        <bndbox>
            <xmin>{x1}</xmin>
            <ymin>{y1}</ymin>
            <xmax>{x2}</xmax>
            <ymax>{y2}</ymax>
        </bndbox>
    </object>"""
        for name, (x1, y1, x2, y2), difficult in objects
    )
    path.write_text(f"""<annotation>
    <folder>VOC2007</folder>
    <filename>{image_id}.jpg</filename>
    <source>
        <database>The VOC2007 Database</database>
        <annotation>PASCAL VOC2007</annotation>
    </source>
    <size>
        <width>100</width>
        <height>80</height>
        <depth>3</depth>
    </size>
    <segmented>0</segmented>{objs}
</annotation>
""")


def make_tiny_voc(tmp_path: Path) -> tuple[Path, Path]:
    """A VOCdevkit with four annotated images (the dog and cat examples above) and a comp4 results folder."""
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    objects = {
        "a": [("dog", (1, 1, 10, 10), 0), ("dog", (21, 1, 30, 10), 0), ("person", (50, 20, 90, 79), 0)],
        "b": [("dog", (1, 1, 10, 10), 1), ("dog", (41, 41, 60, 60), 0)],
        "c": [("person", (1, 1, 10, 10), 0)],
        **CAT_OBJECTS,
    }
    for image_id, objs in objects.items():
        _write_xml(voc / "Annotations" / f"{image_id}.xml", image_id, objs)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("a\nb\nc\nd\n")
    results = tmp_path / "results"
    results.mkdir()
    for cls, dets in (("dog", DOG_DETS), ("cat", CAT_DETS)):
        (results / f"comp4_det_test_{cls}.txt").write_text(
            "".join(f"{img} {score:.6f} {x1} {y1} {x2} {y2}\n" for img, score, (x1, y1, x2, y2) in dets))
    return tmp_path / "VOCdevkit", results


@pytest.fixture
def tiny_voc(tmp_path: Path) -> tuple[Path, Path]:
    return make_tiny_voc(tmp_path)


def test_cli_voc_det_table_json_and_missing_class_files(tiny_voc, capsys):
    devkit, results = tiny_voc
    base = ["evaluate", "voc-det", "--devkit", str(devkit), "--year", "2007", "--split", "test",
            "--results", str(results)]
    assert main([*base, "--json"]) == 0
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert list(payload["ap"]) == list(VOC_CLASSES)
    assert payload["ap"]["dog"] == pytest.approx(DOG_AP_INCLUSIVE, abs=1e-12)  # VOCevaldet.m's ovmax >= 0.5
    assert payload["ap"]["cat"] == pytest.approx(6 / 11, abs=1e-12)
    assert payload["ap"]["person"] == 0.0  # missing result file -> AP 0 ...
    assert "comp4_det_test_person.txt not found" in err  # ... with a warning
    assert payload["map"] == pytest.approx((DOG_AP_INCLUSIVE + 6 / 11) / 20, abs=1e-12)

    assert main([*base, "--strict-iou", "--json"]) == 0  # py-faster-rcnn's ovmax > 0.5
    assert json.loads(capsys.readouterr().out)["ap"]["dog"] == pytest.approx(DOG_AP_STRICT, abs=1e-12)

    assert main(base) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert rows["dog"] == ["74.5", "3", "7"]  # AP %, non-difficult objects, detections
    assert rows["cat"] == ["54.5", "2", "2"]
    assert rows["mAP"] == [f"{100 * (DOG_AP_INCLUSIVE + 6 / 11) / 20:.1f}"]  # 6.5


def test_cli_and_detection_task_score_the_same_files_alike(tiny_voc, capsys):
    from xchannel.pascal.detection import evaluate_results

    devkit, results = tiny_voc
    assert main(["evaluate", "voc-det", "--devkit", str(devkit), "--results", str(results), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    task = evaluate_results(devkit, "2007", "test", results)
    assert task["map"] == pytest.approx(100 * cli["map"], abs=1e-9)
    assert task["ap"]["dog"] == pytest.approx(100 * DOG_AP_INCLUSIVE, abs=1e-9)
    assert task["match"] == "IoU >= 0.5"


def test_ground_truth_from_annotation_tools_is_scored_as_the_devkit_scores_it(tmp_path, capsys):
    # A labelling tool's file: a box starting at pixel 0 and one reaching past the 100 x 60 image, float
    # coordinates, no <difficult>/<truncated>/<pose>, and an object of a class outside VOC's 20 (not scored).
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("t1\n")
    (voc / "Annotations" / "t1.xml").write_text(
        "<annotation><size><width>100</width><height>60</height></size>"
        "<object><name>dog</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>19</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>80.5</xmin><ymin>40</ymin><xmax>101</xmax><ymax>60</ymax></bndbox>"
        "</object><object><name>lamp</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
        "</bndbox></object></annotation>")
    results = tmp_path / "res"
    results.mkdir()
    # d1 equals the first ground-truth box as written (IoU 1: widths 19 - 0 + 1 = 20). d2 covers the second box's
    # in-image part x 81..100: its IoU with the box as written (80.5..101, width 21.5 x 21 = 451.5) is
    # 20 x 21 / 451.5 = 0.930 -> TP. Had the evaluator clipped the box or rounded it, d1 would still match, but
    # a strict reader refuses the file outright.
    (results / "comp4_det_test_dog.txt").write_text("t1 0.9 0 0 19 9\nt1 0.8 81 40 100 60\nt1 0.7 30 30 40 40\n")
    args = ["evaluate", "voc-det", "--devkit", str(tmp_path / "VOCdevkit"), "--results", str(results), "--json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    # TP TP FP, npos 2: precision 1 at recall 1 -> 11-point AP 1.
    assert json.loads(out)["ap"]["dog"] == pytest.approx(1.0)
    warnings = [ln for ln in err.splitlines() if "annotation file(s)" in ln]
    assert len(warnings) == 1 and "t1.xml" in warnings[0] and "lamp" in warnings[0]

    from xchannel.data.voc import read_annotation
    with pytest.raises(Exception, match=r"t1\.xml.*--clip-boxes"):  # training refuses the file and says why
        read_annotation(voc / "Annotations" / "t1.xml", "strict")


def test_cli_voc_det_malformed_result_line_names_file_and_line(tiny_voc, capsys):
    devkit, results = tiny_voc
    bad = results / "comp4_det_test_dog.txt"
    bad.write_text("a 0.9 1 1 10 10\na 0.8 1 1 10\n")
    args = ["evaluate", "voc-det", "--devkit", str(devkit), "--results", str(results)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 2" in err and "expected 6 fields" in err and "Traceback" not in err
    bad.write_text("a 0.9 1 1 10 10\nz 0.8 1 1 10 10\n")
    assert main(args) == 2
    assert "line 2: image 'z' is not in the evaluated image set" in capsys.readouterr().err
