"""The retrieval tier: corpus ingest, dense and BM25 encoders, a Qdrant index, search and a Search-R1 compatible API.

Entry points: `retriever.build.build_index` / `python -m retriever.build` and `retriever.app.serve` /
`python -m retriever.app`.
"""
