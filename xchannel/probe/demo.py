"""The demo's Figure 7: linear probes on the embedded data set for the trained cross-channel encoder, the
calibration encoders (a supervised AlexNet trained on the embedded labels above, a Gaussian AlexNet below) and a
k-means AlexNet, all on gray input (as the encoder is trained), conv1-conv5, the paper's pooling rule.

Each encoder's heads are trained with 3 seeds on cached features; every number is the mean over seeds with its 95 %
interval (images and seeds bootstrapped, :mod:`xchannel.metrics.uncertainty`). The trained encoder starts from a
k-means initialisation (``demo-alexnet.yaml``, as the authors trained), so the question the stage answers is
whether colorization training moved it past such a starting point: per layer, the paired difference of the trained
encoder and the k-means row (the same initialisation method, drawn on the probe's training images) on the same
validation images says *ahead*, *behind* or *not separable at 95 %* (:func:`compare_rows`), in ``figure7.md`` and
``figure7.json``. The calibration comparisons say, per layer, whether the supervised encoder is ahead of the
trained one and the trained one ahead of the Gaussian network: the ordering a benchmark that can tell methods apart
must show at conv3-conv5."""

from __future__ import annotations

import time

from xchannel.utils.io import atomic_write_json, atomic_write_text

# Small images (160 px) and a narrow encoder: probes run at 200 px crops of images resized to 228 (transfer
# geometry), a few epochs on cached features. The scale sits between the colorization encoder's training (128 px
# crops of 160 px images) and the supervised encoder's (227 of 240, as the transfer geometry's fc6 needs): at 128 px
# the supervised encoder saw its objects at half their training size and probed 3-4 points *below* the colorization
# encoder at conv2-conv5; at 200 px it is ahead (conv5 62.0 ± 1.9 against 46.7 ± 1.8; the colorization encoder
# probes the same at both scales, 47.4 at 128 px).
# 6 epochs over generator v3's 1600 training images (12 over v2's 640: a few more updates in all).
CROP, RESIZE, EPOCHS = 200, 228, 6


def compare_rows(ours: dict, baseline: dict, name: str = "the trained encoder",
                 baseline_name: str = "the k-means initialisation") -> dict[str, dict]:
    """Per layer of both probe results: the paired difference of top-1 (ours - baseline, points) with its 95 %
    interval, the verdict (:func:`~xchannel.metrics.uncertainty.separation`) and one plain sentence."""
    from xchannel.metrics.uncertainty import accuracy_difference_interval, separation
    from xchannel.probe.run import top1_hits

    if (ours["data"]["path"], ours["per_image"]["images"]) != (baseline["data"]["path"],
                                                               baseline["per_image"]["images"]):
        raise ValueError("a paired comparison needs both probes scored on the same validation images")
    out = {}
    for layer in ours["layer_order"]:
        if layer not in baseline["layers"]:
            continue
        diff = accuracy_difference_interval(top1_hits(ours, layer), top1_hits(baseline, layer))
        verdict = separation(diff)
        span = f"{diff.value:+.1f} points, 95 % interval [{diff.lo:+.1f}, {diff.hi:+.1f}]"
        sentence = {"ahead": f"{layer}: {name} is ahead of {baseline_name} ({span}).",
                    "behind": f"{layer}: {name} is behind {baseline_name} ({span}).",
                    "not separable": f"{layer}: {name} and {baseline_name} are not separable at 95 % ({span})."
                    }[verdict]
        out[layer] = {**diff.to_dict(), "verdict": verdict, "sentence": sentence}
    return out


def probe_stage(ctx) -> dict:
    from xchannel.probe.run import ProbeConfig, run_probe
    from xchannel.reports.figure7 import demo_markdown, write_plot

    import shutil

    width = 0.25  # the demo encoder's width (xchannel/configs/demo-alexnet.yaml); baselines match it
    out_dir = ctx.work / "probes"
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = out_dir / "colorization.pt"  # the encoder's name in tables and plots is its file's stem
    shutil.copyfile(ctx.outputs["encoder_checkpoint"], ours)
    encoders = {}  # the calibration rows (supervised above, Gaussian below) first
    if ctx.outputs.get("supervised_checkpoint"):
        supervised = out_dir / "supervised.pt"
        shutil.copyfile(ctx.outputs["supervised_checkpoint"], supervised)
        encoders["supervised (embedded labels)"] = str(supervised)
    encoders.update({"Gaussian": f"gaussian:width={width}", "colorization (ours)": str(ours),
                     "k-means": f"kmeans:width={width}"})
    results, intervals, records, paths = {}, {}, {}, []
    for label, spec in encoders.items():
        tag = label.split()[0].lower().replace("-", "")
        cfg = ProbeConfig(encoder=spec, data=str(ctx.data / "imagenet"), layers=["conv1", "conv2", "conv3", "conv4",
                          "conv5"], input_mode="gray", crop=CROP, resize=RESIZE, epochs=EPOCHS, batch_size=64,
                          cache=str(out_dir / "cache"), augment=False, workers=1, seed=ctx.seed, kmeans_images=128,
                          out=str(out_dir / f"{tag}.json"), data_name="embedded", progress=ctx.progress)
        res = run_probe(cfg)  # also written to cfg.out
        paths.append(out_dir / f"{tag}.json")
        records[label] = res
        results[label] = {layer: res["layers"][layer]["top1"] for layer in res["layer_order"]}
        intervals[label] = {layer: res["layers"][layer]["top1_ci"] for layer in res["layer_order"]}
    t0 = time.perf_counter()
    ours_rec = records["colorization (ours)"]
    calibration, sections = {}, []
    if "supervised (embedded labels)" in records:
        calibration["supervised_vs_ours"] = compare_rows(records["supervised (embedded labels)"], ours_rec,
                                                         "the supervised encoder", "the colorization encoder")
        sections.append(("Calibration, top: the supervised encoder against the colorization encoder:",
                         calibration["supervised_vs_ours"]))
    calibration["ours_vs_gaussian"] = compare_rows(ours_rec, records["Gaussian"], "the colorization encoder",
                                                   "the Gaussian network")
    sections.append(("Calibration, bottom: the colorization encoder against the Gaussian network:",
                     calibration["ours_vs_gaussian"]))
    comparison = compare_rows(ours_rec, records["k-means"])
    sections.append(("The trained colorization encoder (k-means initialised, then trained) against the k-means row:",
                     comparison))
    compare_seconds = time.perf_counter() - t0
    bootstrap_seconds = compare_seconds + sum(r["timing"]["bootstrap_seconds"] for r in records.values())
    chance = records["k-means"]["chance"]
    atomic_write_json(ctx.results / "figure7.json", {
        "data": f"embedded (xchannel make-data, seed {ctx.seed})", "top1": results, "top1_ci": intervals,
        "seeds": records["k-means"]["seeds"], "chance": chance, "protocol": cfg.protocol, "crop": CROP,
        "epochs": EPOCHS, "ours_vs_kmeans": comparison, "calibration": calibration,
        "bootstrap_seconds": round(bootstrap_seconds, 3)})
    atomic_write_text(ctx.results / "figure7.md", demo_markdown(records, sections))
    write_plot(paths, ctx.results / "figure7.png")
    return {"top1": results, "top1_ci": intervals, "ours_vs_kmeans": {k: c["verdict"] for k, c in comparison.items()},
            "calibration": {name: {k: c["verdict"] for k, c in comp.items()} for name, comp in calibration.items()},
            "bootstrap_seconds": round(bootstrap_seconds, 3)}
