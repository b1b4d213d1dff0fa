"""Code version of each stage. Bump one when its outputs would change for the same inputs.

It is part of every node key of that stage (and so of everything downstream),
the marin way: explicit, reviewable, and blind to comment-only edits.
"""

CODE_VERSIONS: dict[str, str] = {
    "build": "1",
    "prepare": "1",
    "generate": "1",
    "verify": "1",
    "compress": "2",  # 2: each request seeded from its trace id (was: one seed for all); raw/compressed token columns
    "judge": "2",
    "derive": "1",
    "train": "1",
    "evaluate": "2",  # 2: each request seeded from the run's seed and the question id (was: 0); reasoning_tokens
    "report": "3",  # 2: cells with several seeds (pooled, SD over seeds), per-run records; findings with paired CIs; measured cost; 3: cost ledger (Table 12), Pareto on ledger totals
}
