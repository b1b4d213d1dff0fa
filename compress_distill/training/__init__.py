"""Student training backends. `train_student` (TRL, CPU) is the embedded one; Axolotl runs the GPU cells.

Imports are lazy: planning code can import this package without pulling torch.

- `trl_backend`: `train_student(...) -> TrainResult`, one cell per call.
- `loss_log`: the loss-curve callback and `loss.parquet` schema.
- `data`: reading chat-format training sets; counting trained tokens.
- `tiny_models`: random-init tiny students and synthetic chats for tests and benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compress_distill.training.trl_backend import TrainResult, train_student

__all__ = ["TrainResult", "train_student"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from compress_distill.training import trl_backend

        return getattr(trl_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
