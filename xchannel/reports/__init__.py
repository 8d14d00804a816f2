"""The paper's figures and tables from result files, published numbers beside ours: one module per report.

=====================================  =========================================================================
:mod:`xchannel.reports.figure7`        Fig. 7 (linear probes per layer): the per-result text table, the merged
                                       table (markdown and CSV), the plot with 95 % error bars, the demo's page
:mod:`xchannel.reports.table1`         Table 1 (colorization quality): markdown, CSV and the JSON record
:mod:`xchannel.reports.table2`         Table 2 (PASCAL classification, detection, segmentation): markdown, CSV
:mod:`xchannel.reports.comparison`     pretext tasks compared: measured rows beside the published ones, and
                                       differences from colorization and the Gaussian baseline beyond the intervals
:mod:`xchannel.reports.runs`           a sweep's run records: every job's config, seed, checkpoint sha256, time
:mod:`xchannel.reports.sweep`          a sweep's results collected into the reports above, a training summary
                                       and the job list
:mod:`xchannel.reports.published`      the published numbers (package data) and their validating loader
:mod:`xchannel.reports.format`         how every report writes numbers, ``mean ± half-width``, ranges and table rows
:mod:`xchannel.reports.results`        reading the result files that reports are made from
=====================================  =========================================================================

Data flows one way: the benchmarks write result records (with their intervals, :mod:`xchannel.metrics.uncertainty`);
the reports read them and never import training code. The CLI commands (``xchannel plot``, ``xchannel report``,
``xchannel table2``, ``xchannel evaluate colorization``) and the demo stages call these modules.
"""
