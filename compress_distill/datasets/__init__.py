"""Benchmark datasets: the normalized question schema, the registry of the paper's datasets, and loaders.

- `schema`: the one Parquet schema every question row has, stable ids, validation/quarantine.
- `registry`: one entry per dataset of Table 1 plus the OOD suites, each with a normalizer
  from that dataset's native (Hugging Face) row format.
- `loaders`: `load_dataset_rows` (HF hub, local Parquet/JSONL, or `synthetic:` mini world)
  and `prepare_questions`, which writes `questions.parquet` + `quarantine.parquet`.

Not to be confused with the Hugging Face `datasets` library, which `loaders` imports lazily.
"""
