"""Where the images of a dataset run come from, and how each is named.

A source is one of:

- image files and folders (searched recursively for files Pillow can open);
- list files: ``.txt`` / ``.lst`` (one path per line; blank lines and lines
  starting with ``#`` are ignored), ``.csv`` / ``.tsv`` (a header row with a
  ``path`` column and optional ``target`` and ``label`` columns) or
  ``.parquet`` / ``.pq`` (the same columns); relative paths are relative to the
  list file's folder;
- a ``ray.data.Dataset`` whose rows have a ``path`` (a file to read) or an
  ``image`` (a decoded ``(H, W)`` or ``(H, W, 3)`` array), and optionally
  ``target``, ``label`` and ``name``.

Every image gets a *name* (its path relative to the folder it was found in, or
as written in a list file) and an *id* derived from the name and a SHA-256 hash
of its bytes: the same file found again (by a resumed run, from another working
directory) has the same id, and a changed file gets a new one.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import find_images

__all__ = [
    "LIST_SUFFIXES",
    "NO_TARGET",
    "Item",
    "SourceError",
    "content_hash",
    "image_id",
    "is_ray_dataset",
    "item_batches",
    "item_columns",
    "list_items",
    "row_value",
]

#: File endings read as lists of images rather than as images.
LIST_SUFFIXES = {".txt": "text", ".lst": "text", ".csv": "csv", ".tsv": "tsv",
                 ".parquet": "parquet", ".pq": "parquet"}

#: The target of an image that has none (its top class is explained): batches are
#: numpy columns, so "no target" is a number.
NO_TARGET = -1


class SourceError(ValueError):
    """A source that cannot be listed: missing path, bad list file, bad column."""


@dataclass(frozen=True)
class Item:
    """One image file to explain.

    Attributes
    ----------
    path : str
        Absolute path of the file.
    name : str
        Its name in the store: the path relative to the folder it was found in,
        the path as written in a list file, or the file name if given directly.
    target : int
        The class to explain, or :data:`NO_TARGET` for the model's top class.
    label : str or None
        A ground-truth label from a list file, kept in the records.
    """

    path: str
    name: str
    target: int = NO_TARGET
    label: str | None = None


def is_ray_dataset(source: Any) -> bool:
    """Whether ``source`` is a ``ray.data.Dataset`` (without importing Ray)."""
    return any(c.__module__.startswith("ray.data") and c.__name__ == "Dataset"
               for c in type(source).__mro__)


def list_items(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Item]:
    """Expand files, folders and list files into the images to explain, in order.

    Raises
    ------
    SourceError
        A path does not exist, a list file is malformed, or nothing was found.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    items: list[Item] = []
    given = list(sources)
    if not given:
        raise SourceError("no source given; pass image files, folders or list files")
    for raw in given:
        path = Path(raw)
        if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            items.extend(_read_list(path))
            continue
        try:
            found = find_images([path])
        except FileNotFoundError as err:
            raise SourceError(str(err)) from None
        root = path if path.is_dir() else None
        for file in found:
            name = file.relative_to(root).as_posix() if root is not None else file.name
            items.append(Item(path=str(file.resolve()), name=name))
    if not items:
        raise SourceError(f"no image files found in {', '.join(str(s) for s in given)}")
    return items


def _read_list(path: Path) -> list[Item]:
    kind = LIST_SUFFIXES[path.suffix.lower()]
    if kind == "text":
        rows = [{"path": line.strip()} for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    elif kind == "parquet":
        rows = _parquet_rows(path)
    else:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",")
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise SourceError(
                    f"{path}: a {kind.upper()} list needs a header row with a 'path' column "
                    f"(optional: 'target', 'label'); found columns {reader.fieldnames}"
                )
            rows = list(reader)
    base = path.parent
    items = []
    for line, row in enumerate(rows, start=2 if kind in ("csv", "tsv") else 1):
        written = str(row.get("path") or "").strip()
        if not written:
            raise SourceError(f"{path}: row {line} has an empty path")
        file = Path(written).expanduser()
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            raise SourceError(f"{path}: row {line}: image {written!r} does not exist")
        items.append(Item(path=str(file.resolve()), name=written,
                          target=_target(row.get("target"), f"{path}: row {line}"),
                          label=_label(row.get("label"))))
    return items


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds
        raise SourceError(f"{path}: not a readable Parquet file ({err})") from err
    if "path" not in table.column_names:
        raise SourceError(
            f"{path}: a Parquet list needs a 'path' column (optional: 'target', 'label'); "
            f"found columns {table.column_names}"
        )
    keep = [c for c in ("path", "target", "label") if c in table.column_names]
    return table.select(keep).to_pylist()


def _target(value: Any, where: str) -> int:
    """A target cell: empty means the top class; otherwise a class index >= 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return NO_TARGET
    if isinstance(value, float) and np.isnan(value):
        return NO_TARGET
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: target must be a class index, got {value!r}") from None
    if number != int(number) or number < 0:
        raise SourceError(f"{where}: target must be a class index >= 0, got {value!r}")
    return int(number)


def _label(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def item_batches(items: Sequence[Item], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The items as column batches of at most ``batch_size`` rows (the batch form
    both engines hand to :func:`salience.dataset.work.prepare_batch`)."""
    for start in range(0, len(items), batch_size):
        yield item_columns(items[start:start + batch_size])


def item_columns(items: Sequence[Item]) -> dict[str, np.ndarray]:
    """Items as columns ``path``, ``name``, ``target``, ``label``."""
    return {
        "path": np.array([i.path for i in items], dtype=object),
        "name": np.array([i.name for i in items], dtype=object),
        "target": np.array([i.target for i in items], dtype=np.int64),
        "label": np.array([i.label for i in items], dtype=object),
    }


def content_hash(data: bytes | np.ndarray) -> str:
    """SHA-256 (hex) of a file's bytes, or of a decoded array's shape, dtype and values."""
    digest = hashlib.sha256()
    if isinstance(data, np.ndarray):
        digest.update(f"{data.shape}|{data.dtype.str}|".encode())
        data = np.ascontiguousarray(data).tobytes()
    digest.update(data)
    return digest.hexdigest()


def image_id(name: str, content: str) -> str:
    """The id of an image in the store: 24 hex digits from its name and content hash."""
    return hashlib.sha256(f"{name}\0{content}".encode()).hexdigest()[:24]


def row_value(batch: Mapping[str, Any], column: str, i: int, default: Any = None) -> Any:
    """``batch[column][i]``, or ``default`` when the batch has no such column."""
    values = batch.get(column)
    if values is None:
        return default
    value = values[i]
    return default if value is None else value
