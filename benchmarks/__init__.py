"""Benchmarks of xchannel: the paper's published numbers (:mod:`benchmarks.published`) and the performance
benchmarks (:mod:`benchmarks.perf`, ``make bench``)."""
