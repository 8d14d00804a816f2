"""The demo's Figure 7: linear probes on the embedded data set for the trained cross-channel encoder and the
Gaussian and k-means baselines (gray input, as the encoder is trained), conv1-conv5, the paper's pooling rule."""

from __future__ import annotations

from xchannel.utils.io import atomic_write_json, atomic_write_text

# Small images (160 px) and a narrow encoder: probes run at 128 px crops (transfer geometry: conv1 30x30, conv2
# 14x14, conv3-5 6x6) for a few epochs on cached features.
CROP, RESIZE, EPOCHS = 128, 146, 12


def probe_stage(ctx) -> dict:
    from xchannel.commands.plot import make_plot
    from xchannel.probe.run import ProbeConfig, format_table, run_probe

    import shutil

    width = 0.25  # the demo encoder's width (xchannel/configs/demo-alexnet.yaml); baselines match it
    out_dir = ctx.work / "probes"
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = out_dir / "colorization.pt"  # the encoder's name in tables and plots is its file's stem
    shutil.copyfile(ctx.outputs["encoder_checkpoint"], ours)
    encoders = {"colorization (ours)": str(ours),
                "Gaussian": f"gaussian:width={width}", "k-means": f"kmeans:width={width}"}
    results, paths, tables = {}, [], []
    for label, spec in encoders.items():
        tag = label.split()[0].lower().replace("-", "")
        cfg = ProbeConfig(encoder=spec, data=str(ctx.data / "imagenet"), layers=["conv1", "conv2", "conv3", "conv4",
                          "conv5"], input_mode="gray", crop=CROP, resize=RESIZE, epochs=EPOCHS, batch_size=64,
                          cache=str(out_dir / "cache"), augment=False, workers=1, seed=ctx.seed, kmeans_images=128,
                          out=str(out_dir / f"{tag}.json"), data_name="embedded", progress=ctx.progress)
        res = run_probe(cfg)  # also written to cfg.out
        paths.append(out_dir / f"{tag}.json")
        results[label] = {layer: res["layers"][layer]["top1"] for layer in res["layer_order"]}
        tables.append(f"{label}\n{format_table(res)}")
    atomic_write_json(ctx.results / "figure7.json", {"data": "embedded (xchannel make-data, seed "
                                                              f"{ctx.seed})", "top1": results,
                                                     "protocol": cfg.protocol, "crop": CROP, "epochs": EPOCHS})
    atomic_write_text(ctx.results / "figure7.md", "Linear probes on the embedded data set (top-1 %, val)\n\n```\n"
                      + "\n\n".join(tables) + "\n```\n")
    make_plot("figure7", paths, ctx.results / "figure7.png")
    return {"top1": results}
