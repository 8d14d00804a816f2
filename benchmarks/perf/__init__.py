"""Performance benchmarks (``make bench``, ``python -m benchmarks.perf [--short]``): one module per target of the
performance issue, each timing our implementation against a named baseline in the same run and writing
``results/perf/<name>.json``; see ``benchmarks/perf/README.md`` for the protocol and the figures."""

#: Run order: the loader's baseline is the training step's rate measured just before it.
BENCHMARKS = ("targets", "train_step", "loader", "probes", "colorize", "task_steps")
