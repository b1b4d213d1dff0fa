"""The mini world: a synthetic reasoning task and real tiny models that run on 2 CPU cores.

- `world`: questions (normalised schema, disjoint train/test), answer parsing, chat formats.
- `traces`: verbose teacher-style traces and concise (mild / aggressive) rewrites.
- `tokenizer`: the locally trained BPE tokenizer with a chat template.
- `recipes`: frozen build recipes, their keys, and `resolve_model("mini:teacher")`.
- `build`: the cached model-building step (`build_models`), `train`: its torch loop,
  `measure`: quick sampling loops that report accuracy, rejection yield and compression.

Only `world`, `traces` and `recipes` are importable without torch.
"""
