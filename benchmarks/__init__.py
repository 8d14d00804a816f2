"""Performance benchmarks of xchannel (:mod:`benchmarks.perf`, ``make bench``). The published numbers that the
reports compare against are package data of :mod:`xchannel.reports.published`."""
