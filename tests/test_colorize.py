"""`xchannel colorize`: any size, original L kept, released weights accepted, bad files named, others done."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from xchannel import color as C
from xchannel.cli import main
from xchannel.colorize import colorize_image
from xchannel.convert import to_official_eccv16
from xchannel.models import VGGColorizer, model_checkpoint
from xchannel.utils.io import atomic_torch_save


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An xchannel checkpoint and the same network in the released file's format."""
    d = tmp_path_factory.mktemp("w")
    model = VGGColorizer(width=0.125, seed=0).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so that the colours vary
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    atomic_torch_save(model_checkpoint(model), d / "ours.pt")
    return model, d / "ours.pt"


def _lab(img: Image.Image) -> torch.Tensor:
    return C.rgb_to_lab(torch.from_numpy(np.asarray(img, dtype=np.float64) / 255).permute(2, 0, 1)[None])


def test_any_size_keeps_the_input_lightness(weights):
    model, _ = weights
    photo = Image.fromarray(skdata.chelsea()).resize((301, 187))  # odd size, not a multiple of 8
    gray = photo.convert("L")  # a legacy black-and-white photo
    out = colorize_image(model, gray, size=256)
    assert out.size == gray.size and out.mode == "RGB"
    L_in = _lab(gray.convert("RGB"))[:, 0]
    L_out = _lab(out)[:, 0]
    # only 8-bit quantisation and gamut clipping separate the output's L from the input's
    assert (L_in - L_out).abs().mean() < 0.5
    assert _lab(out)[:, 1:].abs().mean() > 0.5  # it is coloured


def test_cli_folder_with_an_unreadable_file_and_the_released_format(tmp_path, weights, capsys):
    model, ours = weights
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(skdata.astronaut()).resize((97, 64)).save(src / "a.jpg")
    Image.fromarray(skdata.coffee()).convert("L").save(src / "sub" / "b.png")
    (src / "broken.jpg").write_bytes(b"not an image")
    released = tmp_path / "colorization_release_v2-9b330a0b.pth"
    torch.save(to_official_eccv16(model), released)

    rc = main(["colorize", str(src), "-o", str(tmp_path / "out"), "--checkpoint", str(ours)])
    err = capsys.readouterr()
    assert rc == 1 and "broken.jpg" in err.err
    assert (tmp_path / "out" / "a.png").exists() and (tmp_path / "out" / "sub" / "b.png").exists()
    assert Image.open(tmp_path / "out" / "a.png").size == (97, 64)

    rc = main(["colorize", str(src / "a.jpg"), "-o", str(tmp_path / "rel"), "--weights", str(released)])
    assert rc == 0
    a = np.asarray(Image.open(tmp_path / "out" / "a.png"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "rel" / "a.png"), dtype=int)
    assert np.abs(a - b).max() <= 1  # the imported released file colours exactly as our own checkpoint


def test_unsafe_weight_file_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("this would run",))

    path = tmp_path / "evil.pth"
    torch.save({"model1.0.weight": Evil()}, path)
    rc = main(["colorize", str(tmp_path), "-o", str(tmp_path / "o"), "--weights", str(path)])
    err = capsys.readouterr()
    assert rc == 2 and "evil.pth: refused to load" in err.err and "this would run" not in err.out


def test_prior_command_counts_the_data_and_training_accepts_it(tmp_path, capsys):
    from xchannel.data.synthetic import SyntheticSpec, make_dataset
    from xchannel.pretext.colorization import load_prior

    make_dataset(tmp_path / "d", SyntheticSpec(classes=2, train_per_class=3, val_per_class=1, voc_trainval=0, seg_val=0,
                                              voc_test=0, voc2012=False, size=48))
    train_dir = tmp_path / "d" / "imagenet" / "train"
    (train_dir / "c0_bad").mkdir()
    (train_dir / "c0_bad" / "zero.jpg").write_bytes(b"")
    out = tmp_path / "prior.npy"
    assert main(["prior", str(train_dir), "-o", str(out), "--size", "48", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == 1 and report["skipped_files"][0].endswith("zero.jpg")
    p = np.load(out)
    assert p.shape == (313,) and p.sum() == pytest.approx(1.0) and (p >= 0).all()
    # the same counts computed directly from the decoded images
    from xchannel.data.images import ImageFolderDataset, ResizeCenterCrop

    ds = ImageFolderDataset(train_dir, ResizeCenterCrop(48, resize=48))
    imgs = [s["image"] for s in (ds[i] for i in range(len(ds))) if isinstance(s, dict)]
    ab = C.rgb_to_lab(torch.stack(imgs).float() / 255)[:, 1:]
    np.testing.assert_allclose(p, C.empirical_prior([ab]).numpy(), atol=1e-12)
    torch.testing.assert_close(load_prior(str(out)), torch.from_numpy(p))
    (tmp_path / "bad.npy").write_bytes(b"junk")
    with pytest.raises(Exception, match="bad.npy"):
        load_prior(str(tmp_path / "bad.npy"))


def test_convert_command_imports_released_weights(tmp_path, weights):
    from xchannel.checkpoints import load_network

    model, _ = weights
    released = tmp_path / "rel.pth"
    torch.save(to_official_eccv16(model), released)
    assert main(["convert", "official", str(released), "-o", str(tmp_path / "ours.pt")]) == 0
    back, info = load_network(tmp_path / "ours.pt")
    L = torch.rand(1, 1, 64, 64) * 100
    torch.testing.assert_close(back.predict_ab(L), model.predict_ab(L), atol=1e-3, rtol=1e-4)
