"""Questions and samples at rest: the benchmarks (:mod:`~optscale.data.benchmarks`), question selection
(:mod:`~optscale.data.selection`), grading with math-verify (:mod:`~optscale.data.grading`), the Parquet
pools (:mod:`~optscale.data.pools`), their generation with checkpoint / resume
(:mod:`~optscale.data.generation`) and importers of other projects' samples (:mod:`~optscale.data.importers`).
"""
