"""Image decoding, the skip-and-count mechanism, image data sets, and the PASCAL VOC readers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from badfiles import bomb_png as _bomb_png
from badfiles import photo as _photo
from xchannel.data.images import (BadImageError, ImageFolderDataset, ImageListDataset, RandomCropMirror,
                                  ResizeCenterCrop, SkipCounter, collate_skip, is_grayscale, load_rgb)
from xchannel.data.voc import (VOC_CLASSES, VOC_PALETTE, PairedCropMirror, PairedScale, VOCClassification, VOCDetection,
                               VOCSegmentation, boxes_to_xyxy, image_labels, read_annotation, read_class_labels,
                               read_image_set)
from xchannel.errors import UserError

# --------------------------------------------------------------------------------------------------------------
# Odd and bad files (builders shared with the reliability tests: tests/badfiles.py)


def test_bad_files_raise_bad_image_error_naming_file_and_problem(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a JPEG\n")
    good = tmp_path / "good.jpg"
    _photo(64, 48).save(good, quality=95)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    _bomb_png(tmp_path / "bomb.png")
    cases = {
        "empty.jpg": "empty file",
        "text.jpg": "not a recognised image",
        "truncated.jpg": "truncated",
        "bomb.png": "too large",
        "missing.jpg": "no such file",
    }
    for name, problem in cases.items():
        with pytest.raises(BadImageError) as exc:
            load_rgb(tmp_path / name)
        assert isinstance(exc.value, UserError)
        assert str(tmp_path / name) in str(exc.value) and problem in str(exc.value), str(exc.value)
    # Our own limit is checked from the header, before decoding: a 64 x 48 image against a 1000-pixel limit.
    with pytest.raises(BadImageError, match=r"64x48 = 3072 pixels, more than the limit of 1000"):
        load_rgb(good, max_pixels=1000)
    assert load_rgb(good).size == (64, 48)


def test_odd_but_valid_files_decode_to_8bit_rgb(tmp_path):
    # CMYK JPEG: C=0 M=Y=255 K=0 is red.
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    px = np.asarray(load_rgb(tmp_path / "cmyk.jpg"))[8, 8].astype(int)
    assert px[0] > 240 and px[1] < 15 and px[2] < 15

    # 16-bit PNG: scaled by 255/65535, not clipped (Pillow's own convert("L") would give 255 for all but 0).
    a16 = np.array([[0, 25700, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")
    img = load_rgb(tmp_path / "g16.png")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img)[0, :, 0], [0, 100, 128, 255])

    # Palette PNG with a transparent entry: composited on white.
    p = Image.new("P", (4, 2), 0)
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.paste(1, (2, 0, 4, 2))
    p.info["transparency"] = 0
    p.save(tmp_path / "pal.png", transparency=0)
    rgb = np.asarray(load_rgb(tmp_path / "pal.png"))
    np.testing.assert_array_equal(rgb[0, 0], [255, 255, 255])  # transparent red -> white
    np.testing.assert_array_equal(rgb[0, 3], [0, 255, 0])

    # RGBA half-transparent black over white -> mid gray; LA likewise.
    Image.new("RGBA", (2, 2), (0, 0, 0, 128)).save(tmp_path / "rgba.png")
    assert abs(int(np.asarray(load_rgb(tmp_path / "rgba.png"))[0, 0, 0]) - 127) <= 1
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "la.png"))[0, 0], [255, 255, 255])

    # Grayscale JPEG: RGB with R == G == B, flagged gray; a 1x1 image decodes.
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L").save(tmp_path / "gray.jpg")
    g = load_rgb(tmp_path / "gray.jpg")
    ga = np.asarray(g)
    assert g.mode == "RGB" and np.array_equal(ga[..., 0], ga[..., 1]) and np.array_equal(ga[..., 1], ga[..., 2])
    assert is_grayscale(g) and not is_grayscale(_photo())
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "one.png")
    assert load_rgb(tmp_path / "one.png").size == (1, 1)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 32 wide x 16 tall: left half red, right half blue. Orientation 6 = "rotate 90 deg clockwise to
    # display", so the upright image is 16 wide x 32 tall with red on top.
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rot.jpg", quality=95, exif=exif)
    up = np.asarray(load_rgb(tmp_path / "rot.jpg")).astype(int)
    assert up.shape == (32, 16, 3)
    assert up[4, 8, 0] > 200 and up[4, 8, 2] < 60  # top is red
    assert up[28, 8, 2] > 200 and up[28, 8, 0] < 60  # bottom is blue


def test_is_grayscale_follows_the_released_gray_mask():
    base = np.full((32, 32, 3), 128, np.uint8)
    assert is_grayscale(Image.fromarray(base))
    slight = base.copy()
    slight[..., 0] += 1  # |a| ~ 0.7: below the threshold of 5
    assert is_grayscale(Image.fromarray(slight))
    patch = base.copy()
    patch[8:16, 8:16] = (180, 90, 60)  # a clearly coloured 8x8 patch
    assert not is_grayscale(Image.fromarray(patch))


def test_transforms_crop_mirror_and_upscale_small_images():
    torch.manual_seed(0)
    small = Image.fromarray(np.full((10, 20, 3), 77, np.uint8))
    out = RandomCropMirror(16)(small)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
    assert RandomCropMirror(16, dtype=torch.float32)(Image.new("RGB", (1, 1), (255, 0, 0))).shape == (3, 16, 16)
    # Mirror: a left/right ramp comes out in both orders over several draws, never otherwise changed.
    ramp = Image.fromarray(np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 1, 3)))
    rows = {tuple(RandomCropMirror(16)(ramp)[0, 0].tolist()) for _ in range(20)}
    assert rows == {tuple(range(0, 256, 16)), tuple(range(240, -1, -16))}
    ev = ResizeCenterCrop(size=8, resize=12, dtype=torch.float32)(_photo(40, 30))
    assert ev.shape == (3, 8, 8) and 0.0 <= float(ev.min()) and float(ev.max()) <= 1.0


def _make_folder(root: Path, with_bad: bool) -> list[str]:
    """Two classes of good images (one grayscale); optionally bad files among them. Returns the bad names."""
    for k, cls in enumerate(("cats", "dogs")):
        (root / cls).mkdir(parents=True)
        for j in range(3):
            _photo(24 + 4 * j, 20, seed=10 * k + j).save(root / cls / f"{cls}{j}.JPEG", quality=92)
    Image.fromarray(np.full((20, 20), 90, np.uint8), "L").save(root / "dogs" / "grayish.jpg")
    (root / "cats" / "notes.txt").write_text("ignored: not an image extension")
    if not with_bad:
        return []
    (root / "cats" / "broken.jpg").write_text("not an image")
    (root / "dogs" / "zero.png").write_bytes(b"")
    _bomb_png(root / "dogs" / "huge.png")
    return [str(root / "cats" / "broken.jpg"), str(root / "dogs" / "huge.png"), str(root / "dogs" / "zero.png")]


def _collect(ds, workers: int, counter: SkipCounter) -> dict[str, tuple]:
    loader = DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_skip)
    out = {}
    for batch in loader:
        if counter.update(batch) == 0:
            continue
        for path, img, label, has_color in zip(batch["path"], batch["image"], batch["label"], batch["has_color"]):
            out[Path(path).name] = (img.clone(), int(label), bool(has_color))
    return out


def test_folder_dataset_skips_and_counts_bad_images(tmp_path, caplog):
    bad = _make_folder(tmp_path / "dirty", with_bad=True)
    _make_folder(tmp_path / "clean", with_bad=False)
    tf = ResizeCenterCrop(size=16, resize=18)
    dirty = ImageFolderDataset(tmp_path / "dirty", transform=tf)
    assert dirty.classes == ["cats", "dogs"] and len(dirty) == 10  # 7 good + 3 bad; notes.txt ignored
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="xchannel.data"):
        got = _collect(dirty, workers=2, counter=counter)  # bad items travel through worker processes
        _collect(dirty, workers=0, counter=counter)  # a second epoch: counted again, not logged again
    summary = counter.summary()
    assert summary["skipped"] == 6 and summary["skipped_files"] == bad
    assert "not a recognised image" in summary["reasons"][bad[0]] and "too large" in summary["reasons"][bad[1]]
    warned = [r.getMessage() for r in caplog.records if "skipped bad image" in r.getMessage()]
    assert len(warned) == 3 and all(any(b in w for w in warned) for b in bad)

    want = _collect(ImageFolderDataset(tmp_path / "clean", transform=tf), workers=0, counter=SkipCounter())
    assert sorted(got) == sorted(want) and len(got) == 7
    for name, (img, label, has_color) in want.items():
        assert torch.equal(got[name][0], img) and got[name][1:] == (label, has_color)
    assert want["grayish.jpg"][2] is False and want["cats0.JPEG"][2] is True
    assert want["dogs1.JPEG"][1] == 1


def test_image_list_dataset_and_its_errors(tmp_path):
    _make_folder(tmp_path, with_bad=False)
    (tmp_path / "my pics").mkdir()
    _photo().save(tmp_path / "my pics" / "a b.png")
    lst = tmp_path / "list.txt"
    lst.write_text("# path label\ncats/cats0.JPEG 0\n\ndogs/dogs2.JPEG 1\nmy pics/a b.png\nmissing.jpg 3\n")
    ds = ImageListDataset(lst)
    assert ds.targets == [0, 1, -1, 3]
    counter = SkipCounter()
    items = list(counter.filter(ds[i] for i in range(len(ds))))
    assert [it["label"] for it in items] == [0, 1, -1] and items[2]["image"].shape == (3, 30, 40)
    assert counter.summary()["skipped_files"] == [str(tmp_path / "missing.jpg")]
    lst.write_text("cats/cats0.JPEG -4\n")
    with pytest.raises(UserError, match=r"list.txt:1: label must be >= 0"):
        ImageListDataset(lst)
    with pytest.raises(UserError, match="image list not found"):
        ImageListDataset(tmp_path / "nope.txt")


# --------------------------------------------------------------------------------------------------------------
# PASCAL VOC


def _xml(objects: str, w: int = 50, h: int = 40) -> str:
    return (f"<annotation>\n<folder>VOC2007</folder>\n<filename>x.jpg</filename>\n"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n{objects}</annotation>\n")


def _obj(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    b = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return (f"<object>\n<name>{name}</name>\n<truncated>0</truncated>\n<difficult>{difficult}</difficult>\n"
            f"<bndbox>{b}</bndbox>\n</object>\n")


def _voc_tree(root: Path) -> Path:
    """A hand-written two-image VOC2007 tree."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (voc / sub).mkdir(parents=True)
    anns = {
        "000001": _obj("dog", (1, 1, 20, 15)) + _obj("cat", (5, 5, 9, 9), difficult=1),
        "000002": _obj("cat", (10, 10, 50, 40)) + _obj("person", (2, 3, 4, 5), difficult=1)
        + _obj("person", (20, 3, 30, 35)),
    }
    for i, body in anns.items():
        _photo(50, 40).save(voc / "JPEGImages" / f"{i}.jpg")
        (voc / "Annotations" / f"{i}.xml").write_text(_xml(body))
        m = Image.fromarray(np.zeros((40, 50), np.uint8), "P")
        m.putpalette(VOC_PALETTE.ravel().tolist())
        m.save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets/Main/trainval.txt").write_text("000001\n000002\n")
    (voc / "ImageSets/Segmentation/trainval.txt").write_text("000001\n000002\n")
    return voc


def test_read_annotation_and_labels(tmp_path):
    voc = _voc_tree(tmp_path)
    ann = read_annotation(voc / "Annotations" / "000002.xml")
    assert ann["size"] == (50, 40, 3) and ann["filename"] == "x.jpg"
    assert [(o["name"], o["bbox"], o["difficult"]) for o in ann["objects"]] == [
        ("cat", (10, 10, 50, 40), False), ("person", (2, 3, 4, 5), True), ("person", (20, 3, 30, 35), False)]
    labels = image_labels(read_annotation(voc / "Annotations" / "000001.xml"))
    k = {c: i for i, c in enumerate(VOC_CLASSES)}
    assert labels[k["dog"]] == 1 and labels[k["cat"]] == 0 and (labels == -1).sum() == 18
    assert read_image_set(tmp_path, 2007, "trainval") == ["000001", "000002"]  # parent of VOCdevkit works too
    ds = VOCClassification(tmp_path / "VOCdevkit", 2007, "trainval")
    item = ds[1]
    assert item["labels"][k["cat"]] == 1 and item["labels"][k["person"]] == 1 and item["labels"][k["dog"]] == -1
    det = VOCDetection(tmp_path / "VOCdevkit", 2007, "trainval")[1]
    assert det["boxes"].tolist()[0] == [10, 10, 50, 40] and det["difficult"].tolist() == [False, True, False]
    assert boxes_to_xyxy(det["boxes"])[0].tolist() == [9, 9, 50, 40]  # 41 x 31 pixels either way


def test_voc_errors_name_the_file_and_the_problem(tmp_path):
    voc = _voc_tree(tmp_path)
    bad = voc / "Annotations" / "bad.xml"
    bad.write_text("<annotation>\n<size><width>5</width>\n<height>4</height></size>\n<object></annotation>\n")
    with pytest.raises(UserError, match=r"bad\.xml:4: malformed XML: mismatched tag: line 4, column 10"):
        read_annotation(bad)
    bad.write_text(_xml(_obj("unicorn", (1, 1, 5, 5))))
    with pytest.raises(UserError, match=r"bad\.xml: unknown class 'unicorn'"):
        read_annotation(bad)
    bad.write_text(_xml(_obj("dog", (3, 4, 60, 20))))  # xmax 60 > width 50
    with pytest.raises(UserError, match=r"bad\.xml: box \(3, 4, 60, 20\) of 'dog' is empty or outside the 50x40"):
        read_annotation(bad)
    assert read_annotation(bad, "clip")["objects"][0]["bbox"] == (3, 4, 50, 20)
    (voc / "SegmentationClass" / "000002.png").unlink()
    with pytest.raises(UserError, match=r"segmentation mask PNG\(s\) missing: .*SegmentationClass/000002\.png"):
        VOCSegmentation(tmp_path / "VOCdevkit", 2007, "trainval")
    with pytest.raises(UserError, match=r"no VOC2012 folder"):
        read_image_set(tmp_path, 2012, "train")
    with pytest.raises(UserError, match=r"ImageSets/Main/aeroplane_trainval\.txt: class label file .* not found"):
        read_class_labels(tmp_path, 2007, "trainval")


def test_paired_crop_keeps_image_and_mask_aligned():
    torch.manual_seed(0)
    img = Image.fromarray(np.tile(np.arange(20, dtype=np.uint8)[None, :, None], (12, 1, 3)))
    mask = Image.fromarray(np.tile(np.arange(20, dtype=np.uint8)[None, :], (12, 1)), "L")
    for _ in range(5):
        im, m = PairedCropMirror(size=16)(img, mask)
        assert im.shape == (3, 16, 16) and m.shape == (16, 16)
        assert (m[12:] == 255).all() and (im[:, 12:] == 0).all()  # padded rows: void in the mask, black image
        assert torch.equal(im[0, :12].long(), m[:12])  # same crop and mirror for both


def test_paired_scale_keeps_labels_and_alignment():
    """1.5x: the mask takes only values it had (nearest neighbour: void stays void, no blended labels), the image
    is resized alike (a left half of class 3 stays the left half), and a following crop sees both aligned."""
    img = Image.fromarray(np.tile(np.where(np.arange(20) < 10, 200, 0).astype(np.uint8)[None, :, None], (12, 1, 3)))
    mask = Image.fromarray(np.tile(np.where(np.arange(20) < 10, 3, 255).astype(np.uint8)[None, :], (12, 1)), "L")
    im, m = PairedScale(1.5)(img, mask)
    assert im.shape == (3, 18, 30) and m.shape == (18, 30)
    assert set(m.unique().tolist()) == {3, 255} and (m[:, :15] == 3).all() and (m[:, 15:] == 255).all()
    assert (im[0][m == 3] >= 150).all() and (im[0][:, 16:] <= 50).all()
    torch.manual_seed(0)
    im, m = PairedScale(1.5, PairedCropMirror(size=16))(img, mask)
    assert im.shape == (3, 16, 16) and torch.equal(im[0] > 100, m == 3)
    with pytest.raises(ValueError, match="scale"):
        PairedScale(0)


def test_exif_orientation_never_misaligns_voc_boxes(tmp_path):
    """The devkit reads stored pixels (MATLAB's imread ignores the EXIF orientation tag), and VOC boxes refer to
    them. A photo stored 50 x 40 with orientation 6 ("rotate 90° clockwise to view") and annotated on the stored
    pixels is read as stored, so its box still covers the same pixels; annotated on the turned 40 x 50 view, its
    <size> contradicts the stored pixels and reading it stops with an error naming the image and the tag."""
    voc = _voc_tree(tmp_path)
    photo = np.zeros((40, 50, 3), np.uint8)
    photo[1:15, 0:20] = 255  # the dog of 000001: pixels 1..20 x 1..15 (1-based), as stored
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(photo).save(voc / "JPEGImages" / "000001.jpg", quality=95, exif=exif)
    item = VOCDetection(tmp_path / "VOCdevkit", 2007, "trainval")[0]
    assert item["image"].shape[-2:] == (40, 50)  # not turned: upright would give 50 x 40
    x1, y1, x2, y2 = item["boxes"][0].tolist()
    inside = item["image"][0, y1 - 1:y2, x1 - 1:x2].float().mean()
    assert inside > 200  # the box covers the white pixels it was drawn on

    (voc / "Annotations" / "000001.xml").write_text(_xml(_obj("dog", (1, 1, 15, 20)), w=40, h=50))
    with pytest.raises(UserError, match=r"000001\.jpg: the stored image is 50x40 but its annotation .*000001\.xml "
                                        r"says <size> 40x50; its EXIF orientation tag \(6\)"):
        VOCDetection(tmp_path / "VOCdevkit", 2007, "trainval")[0]
