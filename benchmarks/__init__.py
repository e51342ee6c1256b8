"""textcl's benchmarks: side-by-side comparisons with peers, run as ``python -m benchmarks``.

``python -m benchmarks`` lists them, ``python -m benchmarks NAME ...`` runs one,
``python -m benchmarks results`` regenerates ``RESULTS.md`` from ``results/*.json``. The
shared pieces (model and data discovery, common flags, timing, machine info, the JSON result
record) live in :mod:`benchmarks.common`.
"""
