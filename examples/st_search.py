"""Semantic search with a saved textcl encoder through sentence-transformers.

    python examples/st_search.py MODEL_DIR CORPUS_TXT QUERY [QUERY ...]

Prints the top 3 sentences of CORPUS_TXT (one a line) for each query. A folder that is not
a sentence-transformers folder (no ``modules.json``) is reported and skipped (exit 0): use
``textcl encode`` + ``textcl search`` for it.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    model_dir, corpus_file, queries = Path(argv[0]), Path(argv[1]), argv[2:]
    if not (model_dir / "modules.json").is_file():
        print(f"{model_dir}: not a sentence-transformers folder (no modules.json); skipped")
        return 0
    from sentence_transformers import SentenceTransformer, util

    model = SentenceTransformer(str(model_dir), device="cpu")
    corpus = [s.strip() for s in corpus_file.read_text(encoding="utf-8").splitlines() if s.strip()]
    corpus_emb = model.encode(corpus, convert_to_tensor=True, normalize_embeddings=True)
    query_emb = model.encode(queries, convert_to_tensor=True, normalize_embeddings=True)
    for query, hits in zip(
        queries, util.semantic_search(query_emb, corpus_emb, top_k=3), strict=True
    ):
        print(f"sentence-transformers, query: {query}")
        for rank, hit in enumerate(hits, 1):
            print(f"{rank:>4}  {hit['score']:7.4f}  {corpus[hit['corpus_id']]}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
