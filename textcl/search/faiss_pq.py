"""Compressed FAISS kinds: IVF-PQ, OPQ + IVF-PQ and any FAISS factory string.

- ``ivfpq``: ``IndexIVFPQ`` (inner product): ``nlist`` k-means cells, each vector stored as
  the product-quantized residual to its cell centre, ``pq_m`` sub-quantizers of ``pq_bits``
  bits (``pq_m * pq_bits / 8`` bytes of code per vector, plus its 8-byte id in the
  inverted list);
- ``opq-ivfpq``: the same after a learned rotation (``OPQMatrix``: FAISS factory
  ``OPQ{M},IVF{nlist},PQ{M}x{bits}``), which balances the variance over the
  sub-quantizers (often better recall at the same bytes);
- ``factory``: any FAISS ``index_factory`` string (the escape hatch), built with the inner
  product metric and trained on the sample when the index needs training.

These kinds are lossy: search fetches ``top_k * rescore_multiplier`` candidates (default
:data:`DEFAULT_RESCORE_MULTIPLIER`) and re-ranks them exactly against the float shards
(:func:`textcl.search.rescore.rescore`); ``0`` or ``1`` turns rescoring off. The exact
kinds (``flat``, ``ivf``, ``hnsw``) store the float vectors: no rescoring by default.

This module holds the FAISS-specific pieces; :mod:`textcl.search.faiss_index` builds,
writes, loads (inverted lists memory-mapped) and searches every kind.
"""

from __future__ import annotations

import re
from typing import Any

from textcl.errors import InputError

PQ_KINDS: tuple[str, ...] = ("ivfpq", "opq-ivfpq")
FACTORY_KIND = "factory"
COMPRESSED_KINDS: tuple[str, ...] = (*PQ_KINDS, FACTORY_KIND)
"""Kinds whose stored codes are lossy: rescored by default."""
DEFAULT_PQ_BITS = 8
DEFAULT_RESCORE_MULTIPLIER = 4
FACTORY_TRAIN_SIZE = 65_536
"""Default training sample of a factory index with no IVF part (and the least for one)."""


def default_pq_m(dim: int) -> int:
    """Sub-quantizers by default: the largest divisor of ``dim`` up to ``dim / 8`` (48 for
    384-d MiniLM vectors: 48 bytes of code per vector at 8 bits, 32x smaller than float32)."""
    limit = max(1, dim // 8)
    return max(d for d in range(1, limit + 1) if dim % d == 0)


def faiss_message(error: BaseException) -> str:
    """FAISS's own message of a C++ exception, without its ``Error in <function> at
    <file>:<line>:`` prefix."""
    text = str(error).strip()
    text = text.splitlines()[-1] if text else type(error).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", text)


def check_pq(dim: int, pq_m: int, pq_bits: int) -> None:
    """InputError naming the flag when ``pq_m`` does not divide ``dim`` or ``pq_bits`` is
    out of 1..16."""
    for name, flag, value, low, high in (
        ("pq_m", "--pq-m", pq_m, 1, dim),
        ("pq_bits", "--pq-bits", pq_bits, 1, 16),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InputError(f"{flag} ({name}) must be an integer in {low}..{high}, got {value!r}")
    if dim % pq_m:
        divisors = [d for d in range(1, dim + 1) if dim % d == 0]
        raise InputError(
            f"--pq-m (pq_m) {pq_m} does not divide the dimension {dim}: each of the pq_m "
            f"sub-quantizers codes dim / pq_m dimensions; choose one of {divisors}"
        )


def create_compressed(
    faiss: Any,
    kind: str,
    dim: int,
    *,
    nlist: int,
    pq_m: int | None,
    pq_bits: int,
    factory: str | None,
) -> tuple[Any, dict[str, Any]]:
    """An empty, untrained inner-product index of a compressed ``kind`` and its parameters
    (``nlist`` already resolved; ignored by ``factory``)."""
    if kind == FACTORY_KIND:
        if not isinstance(factory, str) or not factory.strip():
            raise InputError("--kind factory needs --factory STRING (a FAISS index_factory string)")
        try:
            fi = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise InputError(
                f"--factory {factory!r}: FAISS cannot build it for {dim}-d inner-product "
                f"vectors: {faiss_message(e)}"
            ) from None
        if int(fi.metric_type) != int(faiss.METRIC_INNER_PRODUCT):
            raise InputError(
                f"--factory {factory!r}: FAISS builds a {type(fi).__name__} that does not use "
                "the inner product (textcl scores by inner product); choose another string"
            )
        return fi, {"factory": factory}
    m = default_pq_m(dim) if pq_m is None else pq_m
    check_pq(dim, m, pq_bits)
    params: dict[str, Any] = {"nlist": nlist, "pq_m": m, "pq_bits": pq_bits}
    if kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        fi = faiss.IndexIVFPQ(quantizer, dim, nlist, m, pq_bits, faiss.METRIC_INNER_PRODUCT)
        return fi, params
    params["factory"] = f"OPQ{m},IVF{nlist},PQ{m}x{pq_bits}"
    return faiss.index_factory(dim, params["factory"], faiss.METRIC_INNER_PRODUCT), params


def ivf_part(faiss: Any, fi: Any) -> Any:
    """The ``IndexIVF`` inside ``fi`` (through a pre-transform or refinement), or None."""
    try:
        return faiss.downcast_index(faiss.extract_index_ivf(fi))
    except RuntimeError:
        return None


def least_training(faiss: Any, fi: Any, params: dict[str, Any]) -> int:
    """The fewest training vectors ``fi`` can be trained on (FAISS's k-means needs at least
    as many points as centroids: ``nlist`` cells, ``2**pq_bits`` codes)."""
    least = 1
    ivf = ivf_part(faiss, fi)
    if ivf is not None:
        least = max(least, int(ivf.nlist))
    if "pq_bits" in params:
        least = max(least, 2 ** int(params["pq_bits"]))
    return least


def default_train_size(faiss: Any, fi: Any, params: dict[str, Any], n: int, cap: int) -> int:
    """Training sample by default: ``256 * nlist`` (FAISS's k-means subsamples to that),
    at least ``256 * 2**pq_bits`` for PQ and :data:`FACTORY_TRAIN_SIZE` for a factory
    index, at most ``cap`` and ``n``."""
    want = 0
    ivf = ivf_part(faiss, fi)
    if ivf is not None:
        want = 256 * int(ivf.nlist)
    if "pq_bits" in params:
        want = max(want, 256 * 2 ** int(params["pq_bits"]))
    if "pq_bits" not in params and "factory" in params:
        want = max(want, FACTORY_TRAIN_SIZE)
    return max(1, min(n, want, cap))


def seed_training(faiss: Any, fi: Any, seed: int) -> None:
    """Seed the k-means of the IVF cells and of the product quantizer (deterministic
    training on the same sample)."""
    ivf = ivf_part(faiss, fi)
    if ivf is not None:
        ivf.cp.seed = seed
        if hasattr(ivf, "pq"):
            ivf.pq.cp.seed = seed


def check_rescore_multiplier(kind: str | None, value: object, *, exact_ok: bool = False) -> None:
    """InputError for a ``--rescore-multiplier`` that is not an integer >= 0, or given to
    an exact search of a float index (``exact_ok``: a quantized index, whose exact search
    over its codes is rescored)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(
            f"--rescore-multiplier must be an integer >= 0 (0 or 1: no rescoring), got {value!r}"
        )
    if kind is None and not exact_ok:
        raise InputError(
            "--rescore-multiplier applies to a quantized index or a search through a FAISS "
            "index (--faiss KIND); exact search of a float index scores every vector exactly "
            "already: drop it"
        )


def resolve_multiplier(kind: str, value: int | None) -> int:
    """Candidates fetched per requested hit (1: no rescoring): ``value``, else
    :data:`DEFAULT_RESCORE_MULTIPLIER` for the compressed kinds and 1 for the exact ones."""
    if value is None:
        return DEFAULT_RESCORE_MULTIPLIER if kind in COMPRESSED_KINDS else 1
    return max(1, int(value))


def configure_search(
    faiss: Any,
    fi: Any,
    kind: str,
    *,
    nprobe: int | None,
    ef_search: int | None,
    k: int,
    default_nprobe: int,
) -> None:
    """Set ``nprobe`` (capped at ``nlist``) and ``ef_search`` on a compressed index;
    InputError when the factory index has no IVF / HNSW part for a given value."""
    ivf = ivf_part(faiss, fi)
    if ivf is not None:
        ivf.nprobe = min(int(nprobe or default_nprobe), int(ivf.nlist))
    elif nprobe is not None:
        raise InputError(
            f"--nprobe applies to an index with IVF cells; this FAISS {kind!r} index "
            f"({type(fi).__name__}) has none: drop --nprobe"
        )
    if ef_search is not None:
        try:
            faiss.ParameterSpace().set_index_parameter(fi, "efSearch", max(ef_search, k))
        except RuntimeError:
            raise InputError(
                f"--ef-search applies to an HNSW index; this FAISS {kind!r} index "
                f"({type(fi).__name__}) has none: drop --ef-search"
            ) from None
