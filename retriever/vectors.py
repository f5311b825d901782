"""Precomputed passage vectors read in row ranges without loading them whole: the reference's released artefacts.

Search-R1 ships wiki-18 as a corpus JSONL and a faiss `IndexFlatIP` of its e5 embeddings (`e5_Flat.index`); its
index builder can also save the embeddings as a raw float32 memmap (`emb_e5.memmap`). Row i of either belongs to
the corpus's i-th passage. Each source here is memory-mapped, so a 65 GB index costs only the rows being read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

VectorsKind = Literal["faiss", "npy", "memmap"]
_FAISS_SUFFIXES = {".index", ".faiss"}
_RAW_SUFFIXES = {".memmap", ".f32", ".bin", ".fvecs32"}


class VectorsError(ValueError):
    """A vector file that cannot be imported; the message says why and what to pass instead."""


class VectorSource(Protocol):
    kind: VectorsKind
    path: Path
    count: int
    dim: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a C-contiguous float32 array."""


# faiss's serialisation of a flat index (faiss/impl/index_write.cpp): a fourcc naming the index
# type, the index header (d: int32, ntotal: int64, two unused int64, is_trained: bool, metric_type: int32,
# metric_arg: float32 only when metric_type > 1), then the vectors as a length-prefixed float32 array (uint64
# count of floats). Reading it ourselves maps a 65 GB index without faiss, and without loading it.
_FLAT_HEADER = np.dtype(
    [("fourcc", "S4"), ("d", "<i4"), ("ntotal", "<i8"), ("unused", "<i8", 2), ("trained", "u1"), ("metric", "<i4")]
)
_FLAT_FOURCCS = {b"IxFI": "inner product", b"IxF2": "L2", b"IxFl": None}  # IxFl: the metric is in the header
_METRIC_INNER_PRODUCT = 0


def _faiss_flat(path: Path) -> np.ndarray:
    """The vectors of the faiss flat inner-product index at `path`, memory-mapped (count x d float32)."""
    if path.stat().st_size < _FLAT_HEADER.itemsize + 8:
        raise VectorsError(f"{path}: too short to be a faiss index")
    header = np.fromfile(path, dtype=_FLAT_HEADER, count=1)[0]
    fourcc = bytes(header["fourcc"])
    if fourcc not in _FLAT_FOURCCS:
        raise VectorsError(
            f"{path}: a faiss index of type {fourcc.decode('latin-1')!r} keeps no exact vectors to import; only flat "
            "indexes (IndexFlatIP) do. Pass the embeddings instead (.npy or the builder's .memmap)"
        )
    if header["metric"] != _METRIC_INNER_PRODUCT:
        metric = _FLAT_FOURCCS[fourcc] or f"metric {header['metric']}"
        raise VectorsError(
            f"{path}: a flat index ranking by {metric}, not inner product; searchr1 ranks by inner product, as the "
            "reference's e5 index does"
        )
    dim, count = int(header["d"]), int(header["ntotal"])
    offset = _FLAT_HEADER.itemsize + 8  # no metric_arg for inner product, then the uint64 float count
    floats = int(np.fromfile(path, dtype="<u8", count=1, offset=_FLAT_HEADER.itemsize)[0])
    if dim < 1 or floats != count * dim or path.stat().st_size != offset + 4 * floats:
        raise VectorsError(f"{path}: a flat index header ({count} x {dim}) that its size does not match: truncated?")
    if count == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(count, dim))


class ArrayVectors:
    """A `.npy` array or a raw float32 memmap (rows of `dim` floats), memory-mapped."""

    def __init__(self, path: Path, kind: VectorsKind, array: np.ndarray) -> None:
        if array.ndim != 2 or array.shape[1] < 1:
            raise VectorsError(f"{path}: expected a 2-d array of vectors, got shape {array.shape}")
        if array.dtype not in (np.float32, np.float16, np.float64):
            raise VectorsError(f"{path}: expected float vectors, got dtype {array.dtype}")
        self.path, self.kind, self._array = path, kind, array
        self.count, self.dim = int(array.shape[0]), int(array.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self._array[start:stop], dtype=np.float32)


def open_vectors(path: str | Path, dim: int | None = None) -> VectorSource:
    """The vector source at `path`: a faiss flat index, a `.npy` file, or a raw float32 memmap (needs `dim`)."""
    path = Path(path)
    if not path.is_file():
        raise VectorsError(f"vector file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in _FAISS_SUFFIXES:
        return ArrayVectors(path, "faiss", _faiss_flat(path))
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise VectorsError(f"{path}: not a .npy array of numbers ({exc})") from None
        return ArrayVectors(path, "npy", array)
    if suffix in _RAW_SUFFIXES:
        if dim is None:
            raise VectorsError(f"{path}: a raw float32 memmap has no header; pass its dimension (--dim, e5: 768)")
        size = path.stat().st_size
        if size % (4 * dim):
            raise VectorsError(f"{path}: {size} bytes is not a whole number of {dim}-d float32 rows")
        return ArrayVectors(path, "memmap", np.memmap(path, dtype=np.float32, mode="r").reshape(-1, dim))
    raise VectorsError(
        f"{path}: unknown vector file type {suffix!r}: pass a faiss flat index (.index), a .npy array "
        f"or a raw float32 memmap ({', '.join(sorted(_RAW_SUFFIXES))}, with --dim)"
    )


def fingerprint(source: VectorSource) -> str:
    """Cheap identity of a vector source (shape and a hash of its first and last rows), checked on resume."""
    digest = hashlib.sha256(f"{source.kind}:{source.count}x{source.dim}".encode())
    if source.count:
        digest.update(source.read(0, min(64, source.count)).tobytes())
        digest.update(source.read(max(0, source.count - 64), source.count).tobytes())
    return digest.hexdigest()[:16]
