"""Library cases' grid maps on disk, written when the library is indexed.

An explanation of a match reads, besides the match's image, its feature maps pooled to the
alignment grid (:func:`monai_cir.explain.grid_maps`: 48 + 120 + 352 channels x 4 x 4 for
EfficientNet-Lite2, 33 KB a case in float32). Computing them costs a forward of the image encoder per
match; the index build runs that forward anyway, so it keeps them here, and the first explanation of
a match after a start needs no forward.

A cache, not part of the index: the store is tied to the network's fingerprint, each entry to the
library file's identity ``(path, mtime_ns, size)`` (:func:`file_identity`). A changed file, another
model or an entry that is not there misses, and the caller computes the maps as before; a store that
is missing or unreadable costs speed only (a warning says why). Written whole into a new folder that
replaces the old one by rename, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .index.base import GRID_STORE_DIR

__all__ = ["GRID_STORE_DIR", "GridMapStore", "file_identity", "folder_written_whole"]

logger = logging.getLogger(__name__)

GRID_STORE_FORMAT = "monai-cir-grid-maps/1"
_MAPS_FILE, _KEYS_FILE = "maps.npy", "keys.json"

FileKey = tuple[str, int, int]


@contextmanager
def folder_written_whole(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``directory`` to fill; when the block succeeds it replaces
    ``directory`` by rename (a reader sees the old folder or the new one, whole), when it fails it is
    removed and ``directory`` stays as it was."""
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if directory.exists():
            retired = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:12]}.old"
            os.replace(directory, retired)
            os.replace(tmp, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_identity(path: str | os.PathLike | None) -> FileKey | None:
    """``(path, mtime_ns, size)`` of a library image file, the key of the grid maps kept for it
    (and of the app's in-memory caches); None when there is no path or the file is not reachable."""
    if not path:
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return str(path), int(stat.st_mtime_ns), int(stat.st_size)


class GridMapStore:
    """Grid maps of library images by file identity, for one network (see the module docstring).

    ``shapes``: per level ``(C, h, w)``; ``maps``: (N, sum C*h*w) float32, row ``rows[key]``."""

    def __init__(self, fingerprint: str, shapes: Sequence[Sequence[int]], keys: Sequence[FileKey], maps: np.ndarray) -> None:
        self.fingerprint = str(fingerprint)
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        width = sum(int(np.prod(s)) for s in self.shapes)
        if maps.ndim != 2 or maps.shape != (len(keys), width):
            raise ValueError(f"grid maps of shape {tuple(maps.shape)} do not match {len(keys)} keys x {width} values (levels {self.shapes})")
        self.maps = maps
        self.rows = {tuple(k): i for i, k in enumerate(keys)}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: FileKey) -> list[torch.Tensor] | None:
        """Per level (1, C, h, w) float32 for the file ``key``, or None when it is not stored."""
        row = self.rows.get(tuple(key))
        if row is None:
            return None
        flat = torch.from_numpy(np.array(self.maps[row], dtype=np.float32))
        out, start = [], 0
        for c, h, w in self.shapes:
            out.append(flat[start : start + c * h * w].view(1, c, h, w))
            start += c * h * w
        return out

    @classmethod
    def load(cls, directory: str | Path, fingerprint: str) -> GridMapStore | None:
        """The store in ``directory`` when it was written for ``fingerprint``; None (with a warning
        that says why, none when the folder does not exist) otherwise."""
        directory = Path(directory)
        if not directory.is_dir():
            return None
        try:
            header = json.loads((directory / _KEYS_FILE).read_text())
            if not isinstance(header, dict):
                raise ValueError(f"{_KEYS_FILE} holds a {type(header).__name__}, not the store's header")
            if header.get("format") != GRID_STORE_FORMAT:
                raise ValueError(f"format {header.get('format')!r}, expected {GRID_STORE_FORMAT!r}")
            if header.get("fingerprint") != fingerprint:
                logger.warning("grid maps in %s were written for another model: not used (rebuild the index to refresh them)", directory)
                return None
            shapes, keys = header["shapes"], header["keys"]
            if not isinstance(shapes, list) or not all(isinstance(s, list) and len(s) == 3 and all(isinstance(v, int) and v > 0 for v in s) for s in shapes):
                raise ValueError("its level shapes are not (channels, height, width) each")
            maps = np.load(directory / _MAPS_FILE, mmap_mode="r", allow_pickle=False)
            width = sum(c * h * w for c, h, w in shapes)
            if maps.ndim != 2 or maps.shape != (len(keys), width):
                raise ValueError(f"its maps are {maps.shape}, expected ({len(keys)}, {width}) for its keys and shapes")
            return cls(header["fingerprint"], shapes, [tuple(k) for k in keys], maps)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            logger.warning("grid maps in %s are unreadable (%s): not used; the explanations compute them", directory, err)
            return None

    @classmethod
    def drop(cls, directory: str | Path, fingerprint: str, paths: set[str]) -> int:
        """Rewrite the store in ``directory`` without the entries of the image files ``paths`` (cases removed from the index);
        a store that holds one of them but cannot be read for ``fingerprint`` is deleted whole (a cache: it costs speed only).
        Returns how many entries were dropped."""
        directory = Path(directory)
        if not paths or not directory.is_dir():
            return 0
        try:
            named = {str(key[0]) for key in json.loads((directory / _KEYS_FILE).read_text()).get("keys", [])}
        except (OSError, ValueError, TypeError, AttributeError, IndexError):
            named = set(paths)  # unreadable: it may hold them
        if not named & set(paths):
            return 0
        store = cls.load(directory, fingerprint)
        keys = [key for key in (store.rows if store is not None else {}) if key[0] not in paths]
        if store is None or not keys:
            shutil.rmtree(directory, ignore_errors=True)
            return len(named & set(paths))
        _write_rows(directory, fingerprint, store.shapes, {k: np.asarray(store.maps[store.rows[k]], dtype=np.float32) for k in keys})
        return len(store.rows) - len(keys)

    @classmethod
    def write(
        cls, directory: str | Path, fingerprint: str, entries: Mapping[FileKey, Sequence[torch.Tensor | np.ndarray]], merge: bool = True
    ) -> Path:
        """Write ``entries`` (file key -> per-level maps (C, h, w) or (1, C, h, w)) for ``fingerprint``.

        ``merge``: keep the entries of a store already there for the same model and levels (an
        index that gains cases); a store of another model is replaced."""
        directory = Path(directory)
        rows: dict[FileKey, np.ndarray] = {}
        shapes: list[tuple[int, ...]] | None = None
        old = cls.load(directory, fingerprint) if merge else None
        for key, levels in entries.items():
            arrays = [np.asarray(torch.as_tensor(m).detach().cpu().float()).reshape(np.shape(m)[-3:]) for m in levels]
            level_shapes = [tuple(a.shape) for a in arrays]
            if shapes is None:
                shapes = level_shapes
            elif level_shapes != shapes:
                raise ValueError(f"grid maps of {key[0]} have levels {level_shapes}, the others {shapes}")
            rows[tuple(key)] = np.concatenate([a.ravel() for a in arrays])
        if old is not None and (shapes is None or old.shapes == shapes):
            shapes = shapes or old.shapes
            for key, row in old.rows.items():
                rows.setdefault(key, np.asarray(old.maps[row], dtype=np.float32))
        if shapes is None:
            raise ValueError("no grid maps to write")
        _write_rows(directory, fingerprint, shapes, rows)
        return directory


def _write_rows(directory: Path, fingerprint: str, shapes: Sequence[Sequence[int]], rows: Mapping[FileKey, np.ndarray]) -> None:
    """The store's two files (maps, keys + header) from flat rows, written whole into ``directory``."""
    keys = list(rows)
    with folder_written_whole(directory) as tmp:
        np.save(tmp / _MAPS_FILE, np.stack([rows[k] for k in keys]).astype(np.float32), allow_pickle=False)
        header = {"format": GRID_STORE_FORMAT, "fingerprint": fingerprint, "shapes": [list(s) for s in shapes], "keys": [list(k) for k in keys]}
        (tmp / _KEYS_FILE).write_text(json.dumps(header))
