"""Target 4: linear probes of all five conv layers in one pass, and from cached features.

Workload: :func:`xchannel.probe.run_probe` with the full-width Gaussian AlexNet (CaffeNet geometry, 227 px crops,
the paper's ``zhang16`` pooling, one BatchNorm + linear head per layer) on the embedded data set (ImageNet-style
train/ and val/ folders), default loader workers, one training epoch and the evaluation per run. The encoder is
built once and handed to every run, so its initialisation is not timed.

* one pass: conv1 ... conv5 probed together (the encoder runs once per batch, stopping at conv5);
* one layer: conv5 alone (the same encoder work, one head);
* five separate runs: conv1, ..., conv5 one at a time (each stopping at its layer), seconds added up (the
  conv5 run is the one-layer run);
* cached: conv1 ... conv5 with a feature cache (``ProbeConfig.cache``): a first pass stores the pooled features,
  then every epoch reads them instead of running the encoder; its epoch time is compared with the one-pass
  run's epoch time.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from benchmarks.perf.common import Check, Settings, embedded_data, median, record, set_threads

NAME = "probes"
TITLE = "Linear probes: five layers in one pass vs one layer and five runs; cached features vs the encoder"
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def run(settings: Settings, context: dict[str, Any] | None = None) -> dict[str, Any]:
    from xchannel.features import load_encoder
    from xchannel.probe import ProbeConfig, run_probe

    set_threads(settings)
    started = time.perf_counter()
    root = embedded_data(settings)
    spec = settings.pick("gaussian", "gaussian", "gaussian:width=0.125")
    encoder = load_encoder(spec)
    scratch = settings.work / "probes"
    cache_dir = scratch / "feature-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cached_epochs = settings.pick(3, 2, 2)

    def probe(tag: str, layers: list[str], epochs: int = 1, **over: Any) -> dict[str, Any]:
        cfg = ProbeConfig(encoder=spec, data=str(root), layers=layers, epochs=epochs, progress=False,
                          out=str(scratch / f"{tag}.json"), data_name="embedded", **over)
        return run_probe(cfg, encoder)["timing"]

    rounds = settings.pick(2, 1, 1)
    runs: dict[str, list[dict[str, Any]]] = {"all": [], **{layer: [] for layer in LAYERS}}
    order = ["all", *LAYERS[::-1]]  # conv5 alone is both "one layer" and one of the five separate runs
    for r in range(rounds):  # the order rotates between rounds: a slow spell does not hit one side only
        for tag in order[r % len(order):] + order[: r % len(order)]:
            runs[tag].append(probe(tag, list(LAYERS) if tag == "all" else [tag]))
    one_pass, conv5 = runs["all"], runs["conv5"]
    cached = probe("cached", list(LAYERS), cache=str(cache_dir), epochs=cached_epochs)

    def med(xs: list[dict[str, Any]], key: str) -> float:
        return median([x[key] for x in xs])

    all_s, conv5_s = med(one_pass, "seconds"), med(conv5, "seconds")
    separate = {layer: med(runs[layer], "seconds") for layer in LAYERS}
    separate_s = sum(separate.values())
    encoder_epoch = med(one_pass, "train_seconds")
    cached_epoch = cached["train_seconds"] / cached_epochs
    figures = {
        "one_pass_seconds": all_s, "conv5_only_seconds": conv5_s, "separate_runs_seconds": separate_s,
        "separate_runs": separate,
        "one_pass_over_one_layer": all_s / conv5_s, "separate_over_one_pass": separate_s / all_s,
        "encoder_epoch_seconds": encoder_epoch, "cached_epoch_seconds": cached_epoch,
        "cached_over_encoder_epoch": cached_epoch / encoder_epoch,
        "cache_fill_seconds": cached["features_seconds"],
        "timings": {**runs, "cached": cached},
    }
    checks = [
        Check("five layers in one pass / one layer", all_s / conv5_s, "<=", 1.5, baseline="conv5 probed alone"),
        Check("five separate runs / one pass", separate_s / all_s, ">=", 3.0, baseline="conv1 ... conv5 one by one"),
        Check("epoch from cached features / epoch with the encoder", 100.0 * cached_epoch / encoder_epoch, "<=",
              10.0, unit="%", baseline="one-pass epoch running the encoder"),
    ]
    n_images = sum(1 for _ in (root / "train").rglob("*.JPEG")), sum(1 for _ in (root / "val").rglob("*.JPEG"))
    workload = {"encoder": spec, "data": "embedded data set", "train_images": n_images[0],
                "val_images": n_images[1], "protocol": "zhang16", "crop": 227, "epochs_per_run": 1,
                "cached_epochs": cached_epochs, "rounds": rounds, "workers": ProbeConfig().workers}
    notes = ["Run seconds include data loading, one training epoch and the evaluation on val/ (timing.seconds of "
             "the probe's result); the encoder's construction is not timed."]
    return record(settings, NAME, TITLE, workload, figures, checks, notes, started)
