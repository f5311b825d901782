"""How an index keeps its data: quantisation, what lives in RAM and what on disk, HNSW parameters.

Chosen per deployment when an index is built or imported (a named profile, optionally with overrides), recorded in
the index manifest and read back by the server, so search always uses the parameters the index was built with.
Memory tiers are Qdrant's: `pinned` on the heap, `cached` memory-mapped and pre-warmed into the page cache,
`cold` memory-mapped and read from disk on first touch (original vectors and payloads cannot be pinned).

Profiles (`python -m retriever.build --profile NAME`, `SEARCHR1_INDEX_PROFILE`):
- `ram`: float vectors and the HNSW graph in RAM, no quantisation (the exact-scores default).
- `int8`: scalar int8 codes in RAM (4x smaller), float originals on disk for rescoring.
- `binary`: one-bit codes in RAM (32x smaller), float originals on disk; oversampled candidates are rescored.
- `turbo2`: TurboQuant two-bit codes in RAM (16x smaller), float originals on disk, rescored.
- `lean`: `turbo2` with the BM25 inverted index on disk too (the 21M-passage configuration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Memory = Literal["pinned", "cached", "cold"]
MappedMemory = Literal["cached", "cold"]
# int8: one byte per dimension; binary: one bit (queries compared at 8 bits, asymmetric); turbo4/2/1: TurboQuant
# (vectors rotated before they are compressed, so the error spreads evenly) at 4, 2 or 1 bits per dimension.
Quantization = Literal["none", "int8", "binary", "turbo4", "turbo2", "turbo1"]


class IndexOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quantization: Quantization = Field("none", description="none, int8, binary, turbo4, turbo2 or turbo1")
    vectors_memory: MappedMemory = Field("cached", description="the float originals: cached or cold (on disk)")
    quantized_memory: Memory = Field("pinned", description="the quantised codes")
    hnsw_memory: Memory = Field("pinned", description="the HNSW graph")
    sparse_memory: Memory = Field("pinned", description="the BM25 inverted index")
    payload_memory: MappedMemory = Field("cold", description="passage texts (read only for the hits returned)")
    hnsw_m: int = Field(16, ge=2, le=128, description="HNSW edges per node")
    hnsw_ef_construct: int = Field(100, ge=4, le=4096, description="HNSW candidates while building")
    oversampling: float = Field(1.0, ge=1.0, le=16.0, description="quantised candidates fetched per hit wanted")
    rescore: bool = Field(True, description="re-rank quantised candidates with the float originals")
    shards: int = Field(1, ge=1, le=1024, description="collection shards on a Qdrant server (cluster)")
    replicas: int = Field(1, ge=1, le=16, description="copies of each shard on a Qdrant server (cluster)")

    @property
    def quantized_search(self) -> QuantizedSearch | None:
        """The query-time parameters of a quantised index; None for an unquantised one."""
        if self.quantization == "none":
            return None
        return QuantizedSearch(rescore=self.rescore, oversampling=self.oversampling)


@dataclass(frozen=True, slots=True)
class QuantizedSearch:
    rescore: bool
    oversampling: float


PROFILES: dict[str, IndexOptions] = {
    "ram": IndexOptions(),
    "int8": IndexOptions(quantization="int8", vectors_memory="cold", oversampling=2.0),
    "binary": IndexOptions(quantization="binary", vectors_memory="cold", oversampling=8.0),
    "turbo2": IndexOptions(quantization="turbo2", vectors_memory="cold", oversampling=4.0),
    "lean": IndexOptions(quantization="turbo2", vectors_memory="cold", oversampling=4.0, sparse_memory="cold"),
}
DEFAULT_PROFILE = "ram"


class IndexOptionsError(ValueError):
    """An unknown profile or a bad override; the message names it and what is allowed."""


def resolve_options(profile: str = DEFAULT_PROFILE, overrides: dict[str, Any] | None = None) -> IndexOptions:
    """A named profile with `overrides` (field -> value) applied and validated."""
    if profile not in PROFILES:
        raise IndexOptionsError(f"unknown index profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if not overrides:
        return PROFILES[profile]
    try:
        return IndexOptions.model_validate({**PROFILES[profile].model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise IndexOptionsError(f"bad index option: {problems}") from None


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`key=value` command-line pairs to a dict (values are validated by resolve_options)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise IndexOptionsError(f"index option {pair!r} is not key=value (e.g. hnsw_m=32)")
        out[key.strip()] = value.strip()
    return out
