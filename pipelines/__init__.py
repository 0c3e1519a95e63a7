"""Prefect flows over the DVC pipeline.

- :mod:`pipelines.pipeline`: flow ``gmg-pipeline``, one task per DVC stage (``gmg run``);
- :mod:`pipelines.sweep`: flow ``gmg-sweep``, grids of DVC experiments on Dask (``gmg sweep``);
- :mod:`pipelines.schedule`: the pipeline on a cron schedule (``gmg serve``);
- :mod:`pipelines.results`: experiments as a table (``gmg results``);
- :mod:`pipelines.grid`, :mod:`pipelines.workspace`, :mod:`pipelines.dvctools`: the pieces.

DVC decides what is up to date; Prefect only orchestrates. See docs/flows.md.
"""
