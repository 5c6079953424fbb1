"""The store of a dataset run: records in Parquet, maps in Zarr, a JSON manifest.

Layout of the output directory ``OUT`` (every file is in a standard format,
readable with pyarrow/pandas/DuckDB, zarr and a JSON parser alone)::

    manifest.json     format, parameters (model identity included), versions, runs
    records/*.parquet one row per image (id, path, content hash, size, target,
                      top classes, per method seconds, map statistics, metrics,
                      status and error); ``map_index`` is the image's row in the maps
    maps.zarr/<name>  one array per method, shaped (rows, *map shape), one chunk
                      per image (uncompressed), sharded by ``shard_rows`` images; NaN
                      in rows no record points to
    index.html, plots/, samples/   the HTML summary (:mod:`salience.dataset.summary`)

One writer (:class:`StoreWriter`) serves every engine.  It commits a batch by
first writing its maps (whole Zarr shards, each file replaced atomically by
zarr) and then its records (a Parquet file written under a temporary name and
renamed into place): a run killed at any moment leaves only whole commits, and
maps of an unfinished commit sit in rows no record points to, which the next
run overwrites.  Every record carries its ``run`` and ``commit`` number; an id
is never committed twice, and when a file at the same path was explained again
(because it changed) the later record wins: :func:`open_results` and the
compaction at the end of a complete run both apply these rules, so the store
holds each image once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..outdir import LOCK_NAME
from .work import IMAGE_COLUMNS, MAP_PREFIX, method_columns

__all__ = [
    "FORMAT",
    "Commit",
    "ParameterMismatchError",
    "Results",
    "StoreError",
    "StoreWriter",
    "open_results",
    "record_schema",
]

#: Version of the store layout, in the manifest.
FORMAT = 1
GENERATOR = "salience"
MANIFEST = "manifest.json"
RECORDS = "records"
MAPS = "maps.zarr"
#: The run's lock file; its name is the one every salience output directory uses, so
#: image searches never read a store as input (:func:`salience.outdir.is_salience_output`).
LOCK = LOCK_NAME
#: Files and folders of a store (all that ``resume=False`` removes).
OWN_FILES = (MANIFEST, RECORDS, MAPS, "index.html", "plots", "samples")
_EXTRA_COLUMNS = (("map_index", "int64"), ("run", "int64"), ("commit", "int64"))


class StoreError(ValueError):
    """The output directory cannot hold or continue this run."""


class ParameterMismatchError(StoreError):
    """Resuming into a store written with other parameters; the message lists them."""


def _arrow_type(kind: str):
    import pyarrow as pa

    return {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
            "list<int64>": pa.list_(pa.int64()), "list<float64>": pa.list_(pa.float64())}[kind]


def record_schema(methods: Sequence[str], metrics: bool):
    """The Arrow schema of the records of a run with these methods."""
    import pyarrow as pa

    fields = list(IMAGE_COLUMNS) + list(_EXTRA_COLUMNS)
    for name in methods:
        fields += method_columns(name, metrics)
    return pa.schema([pa.field(name, _arrow_type(kind)) for name, kind in fields])


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_ABSENT = object()


def parameter_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                      prefix: str = "") -> list[str]:
    """``'key: old -> new'`` for every parameter that differs (dotted keys; a
    method added or dropped is one change)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += parameter_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {_shown(a)} -> {_shown(b)}")
    return changes


def _shown(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value, separators=(", ", ": "))


@dataclass
class Commit:
    """What one :meth:`StoreWriter.write` added to the store."""

    explained: int = 0
    failed: int = 0
    skipped: int = 0


class _Lock:
    """An exclusive lock on the store, held while a run writes (released by the OS
    if the process dies, so a killed run never blocks the next one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: Any = None

    def acquire(self) -> None:
        self.file = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks
            return
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            self.file = None
            raise StoreError(
                f"another salience run is writing to {str(self.path.parent)!r}; wait for it "
                "to finish or choose another output directory"
            ) from None
        # Who holds it, for a person looking (the OS lock is what counts).
        self.file.seek(0)
        self.file.truncate()
        json.dump({"generator": GENERATOR, "target": self.path.parent.name,
                   "host": socket.gethostname(), "pid": os.getpid(), "created": _now()},
                  self.file)
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class StoreWriter:
    """Creates or continues a store and commits batches to it.

    Parameters
    ----------
    out : path
        The output directory.
    parameters : mapping
        What the numbers depend on (:meth:`salience.dataset.work.Plan.parameters`
        plus the model's identity); a store written with other parameters is
        not continued.
    methods : sequence of str
        Method names (record columns and map arrays).
    metrics : bool
        Whether the records have metric columns.
    resume : bool
        Continue a store found in ``out`` (True) or replace it (False).
    shard_rows : int
        Images per Zarr shard (of a new store).
    map_dtype : str
        Precision of new map arrays.
    run_info : mapping
        Engine, versions and the like, kept per run in the manifest.

    Raises
    ------
    StoreError
        ``out`` is a file, holds files that are not a store, or another run is
        writing to it.
    ParameterMismatchError
        ``resume`` and the store was written with other parameters.
    """

    def __init__(self, out: str | os.PathLike, parameters: Mapping[str, Any], *,
                 methods: Sequence[str], metrics: bool, resume: bool = True,
                 shard_rows: int = 32, map_dtype: str = "float32",
                 run_info: Mapping[str, Any] | None = None) -> None:
        self.out = Path(out)
        self.parameters = json.loads(json.dumps(dict(parameters)))
        self.methods = list(methods)
        self.metrics = metrics
        self.schema = record_schema(self.methods, metrics)
        self.map_dtype = map_dtype
        self._check_directory()
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = _Lock(self.out / LOCK)
        self._lock.acquire()
        try:
            self._recover()
            manifest = self._read_manifest()
            if manifest is not None and not resume:
                self._remove_own_files()
                manifest = None
            if manifest is not None:
                self._check_parameters(manifest)
            else:
                manifest = self._new_manifest(shard_rows)
            self.manifest = manifest
            self.shard_rows = int(manifest["layout"]["shard_rows"])
            self.run = len(manifest["runs"])
            manifest["runs"].append({"started": _now(), "finished": None,
                                     **json.loads(json.dumps(dict(run_info or {}),
                                                             default=str))})
            manifest["complete"] = False
            self._save_manifest()
            (self.out / RECORDS).mkdir(exist_ok=True)
            self._load_index()
        except BaseException:
            self._lock.release()
            raise
        self._commit = 0
        self._group: Any = None
        self.explained = self.failed = self.skipped = 0

    # ----------------------------------------------------------------- opening

    def _check_directory(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise StoreError(f"output {str(out)!r} exists and is not a directory")
        if out.is_dir() and not (out / MANIFEST).is_file():
            stray = [p.name for p in out.iterdir()
                     if p.name != LOCK and not p.name.startswith(".")]
            if stray:
                raise StoreError(
                    f"output {str(out)!r} is not empty and holds no salience dataset store "
                    f"(no {MANIFEST}; found {', '.join(sorted(stray)[:5])}); choose an empty "
                    "or new directory"
                )

    def _recover(self) -> None:
        """Undo what a killed run left half done: an interrupted compaction and
        temporary files (records, manifest, zarr's ``.partial`` chunks)."""
        records = self.out / RECORDS
        olds = sorted(self.out.glob(f".{RECORDS}.old-*"))
        if not records.exists() and olds:
            olds[0].rename(records)  # the compaction's rename had not finished
        leftovers = [*self.out.glob(f".{RECORDS}.compact-*"), *self.out.glob(".*.old-*"),
                     *self.out.glob(".*.tmp-*"), *records.glob(".*.tmp-*")]
        for leftover in leftovers:  # temporary files and folders of writes never finished
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        maps = self.out / MAPS
        if maps.is_dir():
            for partial in maps.rglob("*.partial"):
                partial.unlink(missing_ok=True)

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.out / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise StoreError(f"{path} is not a readable manifest ({err})") from err
        if manifest.get("generator") != GENERATOR or manifest.get("kind") != "dataset":
            raise StoreError(f"{path} is not the manifest of a salience dataset store")
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{path} has store format {manifest.get('format')}; this "
                             f"salience writes format {FORMAT}")
        return manifest

    def _check_parameters(self, manifest: Mapping[str, Any]) -> None:
        changes = parameter_changes(manifest.get("parameters", {}), self.parameters)
        if changes:
            raise ParameterMismatchError(
                f"{str(self.out)!r} holds a run with other parameters, so resuming into it "
                f"would mix results: {'; '.join(changes)}. Run with the same parameters, "
                "choose another output directory, or start over with resume=False "
                "(--no-resume), which replaces the store"
            )

    def _remove_own_files(self) -> None:
        for name in OWN_FILES:
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _new_manifest(self, shard_rows: int) -> dict[str, Any]:
        return {
            "generator": GENERATOR, "kind": "dataset", "format": FORMAT, "created": _now(),
            "parameters": self.parameters,
            "layout": {"records": f"{RECORDS}/*.parquet", "maps": MAPS,
                       "row_column": "map_index", "shard_rows": int(shard_rows),
                       "map_dtype": self.map_dtype, "methods": self.methods},
            "runs": [], "complete": False,
        }

    def _save_manifest(self) -> None:
        self.manifest["updated"] = _now()
        write_file_atomically(self.out / MANIFEST,
                              json.dumps(self.manifest, indent=2).encode("utf-8"))

    def _load_index(self) -> None:
        """Ids in the store, the newest record's file size and time per path (to
        skip unchanged files without reading them), and the next free map row."""
        table = _read_records(self.out, columns=["id", "path", "file_size", "file_mtime_ns"])
        self.done_ids: set[str] = set(table.column("id").to_pylist())
        self.files: dict[str, tuple[int, int]] = {}
        for path, size, mtime in zip(table.column("path").to_pylist(),
                                     table.column("file_size").to_pylist(),
                                     table.column("file_mtime_ns").to_pylist()):
            if path is not None:
                self.files[path] = (size, mtime)
        self._next_row = self._aligned(_rows_used(self.out))

    def _aligned(self, row: int) -> int:
        return -(-row // self.shard_rows) * self.shard_rows

    def is_done(self, path: str) -> bool:
        """Whether the file at ``path`` is in the store and unchanged (same size and
        modification time as when it was read)."""
        known = self.files.get(path)
        if known is None:
            return False
        try:
            stat = os.stat(path)
        except OSError:
            return False
        return known == (stat.st_size, stat.st_mtime_ns)

    # ----------------------------------------------------------------- writing

    def write(self, batch: Mapping[str, np.ndarray]) -> Commit:
        """Commit the records (and maps) of one explained batch.

        Rows whose id the store already has (a duplicate in the source) are
        left out and counted as skipped, as are the counts of ``'skipped'`` rows.
        """
        status = np.asarray(batch["status"])
        commit = Commit(skipped=int(np.asarray(batch["skipped"])[status == "skipped"].sum()))
        keep, seen = [], set()
        for i, (state, image) in enumerate(zip(status, batch["id"])):
            if state == "skipped":
                continue
            if image in self.done_ids or image in seen:
                commit.skipped += 1
                continue
            seen.add(image)
            keep.append(i)
        if keep:
            keep_arr = np.asarray(keep, dtype=np.int64)
            with_maps = keep_arr[status[keep_arr] == "ok"]
            map_index = np.full(len(status), -1, dtype=np.int64)
            start = self._next_row
            map_index[with_maps] = start + np.arange(len(with_maps))
            self._write_maps(batch, with_maps, start)
            table = self._table(batch, keep_arr, map_index)
            name = f"part-{self.run:04d}-{self._commit:06d}.parquet"
            self._write_parquet(table, self.out / RECORDS / name)
            self._commit += 1
            self._next_row = self._aligned(start + len(with_maps))
            self.done_ids.update(seen)
            commit.failed = int((status[keep_arr] == "failed").sum())
            commit.explained = len(keep) - commit.failed
        self.explained += commit.explained
        self.failed += commit.failed
        self.skipped += commit.skipped
        return commit

    def _table(self, batch, keep: np.ndarray, map_index: np.ndarray):
        import pyarrow as pa

        n = len(keep)
        columns = {}
        for field in self.schema:
            name = field.name
            if name == "map_index":
                values = [int(v) if v >= 0 else None for v in map_index[keep]]
            elif name == "run":
                values = [self.run] * n
            elif name == "commit":
                values = [self._commit] * n
            elif name in ("top_classes", "top_probabilities"):
                array = np.asarray(batch[name])[keep]
                valid = np.asarray(batch["top_classes"])[keep] >= 0
                values = [row[v].tolist() if v.any() else None for row, v in zip(array, valid)]
            else:
                values = [_scalar(v) for v in np.asarray(batch[name])[keep]]
            columns[name] = pa.array(values, type=field.type)
        return pa.table(columns, schema=self.schema)

    def _write_parquet(self, table, path: Path) -> None:
        import pyarrow.parquet as pq

        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _maps_group(self):
        if self._group is None:
            import zarr

            self._group = zarr.open_group(self.out / MAPS, mode="a")
            self._group.attrs.update({"records": RECORDS, "row_column": "map_index"})
        return self._group

    def _write_maps(self, batch, rows: np.ndarray, start: int) -> None:
        if not len(rows):
            return
        stop = start + len(rows)
        for name in self.methods:
            column = batch.get(MAP_PREFIX + name)
            if column is None:
                continue  # the method failed for this batch: its rows stay NaN
            values = np.asarray(column)[rows]
            array = self._array(name, values.shape[1:], stop)
            array[start:stop] = values.astype(array.dtype, copy=False)

    def _array(self, name: str, shape: tuple[int, ...], needed: int):
        group = self._maps_group()
        if name in group:
            array = group[name]
            if tuple(array.shape[1:]) != tuple(shape):
                raise StoreError(
                    f"maps of {name} are shaped {tuple(shape)} but the store holds "
                    f"{tuple(array.shape[1:])}")
            if array.shape[0] < needed:
                grown = self._aligned(max(needed, 2 * array.shape[0]))
                array.resize((grown, *shape))
            return array
        return group.create_array(
            name, shape=(self._aligned(max(needed, 4 * self.shard_rows)), *shape),
            chunks=(1, *shape), shards=(self.shard_rows, *shape), dtype=self.map_dtype,
            # Saliency maps hardly compress (zstd saved 6-7% on EfficientNet-Lite0's
            # gradient and IG maps for ~1 ms per map): stored raw, written at disk speed.
            compressors=None, fill_value=np.nan,
            attributes={"method": name, "rows": "map_index of the records"},
        )

    # ----------------------------------------------------------------- ending

    def finish(self, complete: bool, seconds: float) -> None:
        """Record the run in the manifest; after a complete run, trim the map arrays
        and compact the records into one file.  The lock is kept until :meth:`close`."""
        if complete:
            self._trim_maps()
            self._compact()
        run = self.manifest["runs"][self.run]
        run.update(finished=_now(), complete=complete, seconds=round(seconds, 3),
                   explained=self.explained, failed=self.failed, skipped=self.skipped)
        self.manifest["complete"] = complete
        self._save_manifest()

    def close(self) -> None:
        """Release the store's lock (safe to call more than once)."""
        self._lock.release()

    def _trim_maps(self) -> None:
        if not (self.out / MAPS).is_dir():
            return
        used = _rows_used(self.out)
        group = self._maps_group()
        for name in self.methods:
            if name in group and group[name].shape[0] > used:
                group[name].resize((used, *group[name].shape[1:]))

    def _compact(self) -> None:
        """One Parquet file instead of one per commit, swapped in as a whole folder;
        the parts are copied one at a time, so memory holds one part (and the keys)."""
        import pyarrow.parquet as pq

        parts = _parts(self.out)
        if len(parts) <= 1:
            return
        keep = _kept_rows(parts)
        tag = uuid.uuid4().hex[:8]
        fresh = self.out / f".{RECORDS}.compact-{tag}"
        fresh.mkdir()
        with pq.ParquetWriter(fresh / f"part-{self.run:04d}-compacted.parquet",
                              self.schema) as sink:
            for part, rows in zip(parts, keep):
                if len(rows):
                    sink.write_table(pq.read_table(part).take(rows).cast(self.schema))
        old = self.out / f".{RECORDS}.old-{tag}"
        records = self.out / RECORDS
        records.rename(old)
        fresh.rename(records)
        shutil.rmtree(old, ignore_errors=True)


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, int) and value < 0:
        return None  # -1 marks "none" in the int columns (sizes, times, targets)
    return value


def _parts(out: Path) -> list[Path]:
    records = out / RECORDS
    return sorted(records.glob("*.parquet")) if records.is_dir() else []


def _rows_used(out: Path) -> int:
    """One more than the largest map row any committed record points to."""
    import pyarrow.parquet as pq

    used = 0
    for part in _parts(out):
        rows = pq.read_table(part, columns=["map_index"]).column("map_index").drop_null()
        if len(rows):
            used = max(used, int(np.max(rows.to_numpy())) + 1)
    return used


#: What decides which record of an image is kept.
_KEY_COLUMNS = ["id", "path", "run", "commit"]


def _kept_rows(parts: Sequence[Path]) -> list[np.ndarray]:
    """Per part, the rows to keep: the first record of each id and, per path, the
    newest (by run and commit).  Reads only the key columns."""
    import pyarrow.parquet as pq

    keys = [pq.read_table(p, columns=_KEY_COLUMNS) for p in parts]
    sizes = [k.num_rows for k in keys]
    if not sum(sizes):
        return [np.zeros(0, dtype=np.int64) for _ in parts]
    run = np.concatenate([k.column("run").to_numpy(zero_copy_only=False) for k in keys])
    commit = np.concatenate([k.column("commit").to_numpy(zero_copy_only=False) for k in keys])
    ids = np.concatenate([np.asarray(k.column("id").to_pylist(), dtype=object) for k in keys])
    paths = np.concatenate([np.asarray(k.column("path").to_pylist(), dtype=object)
                            for k in keys])
    del keys
    order = np.lexsort((commit, run))  # commit order
    _, first = np.unique(ids[order].astype(str), return_index=True)
    keep = np.zeros(len(order), dtype=bool)
    keep[first] = True
    sorted_paths = paths[order]
    has_path = np.flatnonzero(keep & (sorted_paths != None))  # noqa: E711 - elementwise
    if len(has_path):
        named = sorted_paths[has_path].astype(str)
        _, last_from_end = np.unique(named[::-1], return_index=True)
        keep[has_path] = False
        keep[has_path[::-1][last_from_end]] = True
    kept = np.sort(order[keep])
    bounds = np.cumsum([0, *sizes])
    return [kept[(kept >= a) & (kept < b)] - a for a, b in zip(bounds[:-1], bounds[1:])]


def _read_records(out: Path, columns: Iterable[str] | None = None,
                  ids: Iterable[str] | None = None):
    """Every committed record (or those of ``ids``), each image once (see the module
    docs), in the order of the files; ``columns`` limits what is read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = None if columns is None else list(columns)
    parts = _parts(out)
    if not parts:
        if columns is None:
            raise StoreError(f"{out} holds no records yet")
        return pa.table({c: pa.array([], type=_column_type(c)) for c in columns})
    wanted = None if ids is None else pa.array(list(ids), type=pa.string())
    tables = []
    for part, rows in zip(parts, _kept_rows(parts)):
        if wanted is not None:
            found = pc.is_in(pq.read_table(part, columns=["id"]).column("id"), wanted)
            rows = rows[found.to_numpy(zero_copy_only=False)[rows]]
        tables.append(pq.read_table(part, columns=columns).take(rows))
    return pa.concat_tables(tables, promote_options="default")


def _column_type(name: str):
    kinds = dict(IMAGE_COLUMNS) | dict(_EXTRA_COLUMNS)
    return _arrow_type(kinds.get(name, "string"))


class Results:
    """A store read back: records as an Arrow table, maps read lazily by id.

    Attributes
    ----------
    out : Path
    manifest : dict
        Parameters, versions, runs.
    records : pyarrow.Table
        One row per image (see the module docs for the columns).
    methods : list of str
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        path = self.out / MANIFEST
        if not path.is_file():
            raise StoreError(f"{str(self.out)!r} is not a salience dataset store (no {MANIFEST})")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        self.methods = list(self.manifest["layout"]["methods"])
        self._records: Any = None
        self._row_of: dict[str, int] | None = None
        self._group: Any = None

    @property
    def records(self):
        """Every record (read on first use)."""
        if self._records is None:
            self._records = self.table()
        return self._records

    def table(self, columns: Sequence[str] | None = None, ids: Iterable[str] | None = None):
        """The records (of ``ids`` only, if given) with only ``columns``, each image
        once, read now."""
        if not _parts(self.out):
            empty = record_schema(self.methods,
                                  bool(self.manifest["parameters"].get("metrics"))).empty_table()
            return empty if columns is None else empty.select(list(columns))
        return _read_records(self.out, columns, ids)

    def _index(self, image_id: str) -> int:
        if self._row_of is None:
            self._row_of = {image: i for i, image in
                            enumerate(self.records.column("id").to_pylist())}
        try:
            return self._row_of[image_id]
        except KeyError:
            raise KeyError(f"no image with id {image_id!r} in {str(self.out)!r}") from None

    def __len__(self) -> int:
        if self._records is None:
            return self.table(["id"]).num_rows
        return self.records.num_rows

    def __contains__(self, image_id: object) -> bool:
        try:
            self._index(str(image_id))
        except KeyError:
            return False
        return True

    @property
    def ids(self) -> list[str]:
        """Image ids in record order."""
        return self.records.column("id").to_pylist()

    @property
    def complete(self) -> bool:
        """Whether the last run finished every image of its source."""
        return bool(self.manifest.get("complete"))

    def record(self, image_id: str) -> dict[str, Any]:
        """The record of one image as a dict."""
        if self._records is None:  # one record: no need to read them all
            found = _read_records(self.out, ids=[image_id]) if _parts(self.out) else None
            if found is None or not found.num_rows:
                raise KeyError(f"no image with id {image_id!r} in {str(self.out)!r}")
            return found.to_pylist()[0]
        return self.records.slice(self._index(image_id), 1).to_pylist()[0]

    def maps(self, method: str):
        """The Zarr array of one method's maps (rows: the records' ``map_index``)."""
        if method not in self.methods:
            raise KeyError(f"no method {method!r} in this store; it has {self.methods}")
        if self._group is None:
            import zarr

            self._group = zarr.open_group(self.out / MAPS, mode="r")
        if method not in self._group:
            raise KeyError(f"the store has no maps of {method!r} (it failed on every image)")
        return self._group[method]

    def map(self, image_id: str, method: str) -> np.ndarray:
        """One image's map of one method (read from disk now).

        Raises
        ------
        KeyError
            Unknown id or method.
        ValueError
            The image or the method failed on it, so there is no map.
        """
        record = self.record(image_id)
        if record["map_index"] is None or record.get(f"{method}.status") != "ok":
            if method not in self.methods:
                raise KeyError(f"no method {method!r} in this store; it has {self.methods}")
            reason = record.get(f"{method}.error") or record.get("error") or "no map"
            raise ValueError(f"image {image_id!r} has no {method} map: {reason}")
        return np.asarray(self.maps(method)[record["map_index"]])

    def to_pandas(self):
        """The records as a pandas DataFrame (needs pandas)."""
        return self.records.to_pandas()


def open_results(out: str | os.PathLike) -> Results:
    """Read a dataset store back: ``open_results(DIR).records`` (a pyarrow Table),
    ``.map(id, method)``, ``.maps(method)`` (a lazy Zarr array), ``.manifest``."""
    return Results(out)

