"""Explain a whole dataset into a resumable store of Parquet records and Zarr maps.

::

    import salience
    summary = salience.explain_dataset("photos/", net, ["gradients", "xrai"], "run-1")
    results = salience.open_results("run-1")
    results.records            # a pyarrow Table, one row per image
    results.map(id, "xrai")    # one map, read from disk when asked

The pieces: :mod:`~salience.dataset.sources` (what to explain),
:mod:`~salience.dataset.work` (the per-batch work, the same in every engine),
:mod:`~salience.dataset.engines` (``local``, in this process, and ``ray``),
:mod:`~salience.dataset.store` (the one writer and the reader) and
:mod:`~salience.dataset.summary` (the HTML summary).  Needs ``pyarrow`` and
``zarr`` (``pip install salience[dataset]``); Ray only for ``engine='ray'``
(``salience[ray]``).
"""

from .api import DatasetSummary, explain_dataset, model_identity
from .engines import Engine, LocalEngine, RayEngine
from .sources import SourceError
from .store import ParameterMismatchError, Results, StoreError, open_results

__all__ = [
    "DatasetSummary",
    "Engine",
    "LocalEngine",
    "ParameterMismatchError",
    "RayEngine",
    "Results",
    "SourceError",
    "StoreError",
    "explain_dataset",
    "model_identity",
    "open_results",
]
