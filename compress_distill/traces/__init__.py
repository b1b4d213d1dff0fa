"""The data plane on reasoning traces: pure libraries that turn trace records into verdicts, tables
and training sets, with no scheduling, no jobs and no Prefect (the stages in `stages/` drive them).
`extraction` reads a response's final answer and verifies it (the paper's type-specific cascade;
`verify_cli` is `compress-distill verify` over JSONL), `compression` builds the compressor's prompts,
assembles compressed traces and their compression ratios, `derive` makes the derived training
targets (raw, compressed, answer-only, truncations), `trainset` writes the training sets both
trainers read, `judge` holds the judge's prompt, verdict parsing and Table 10, and `tokenization`
counts and cuts tokens. This file imports nothing, so importing one module does not import the others.
"""
