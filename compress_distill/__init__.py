"""compress-distill: reasoning-trace compression for knowledge distillation, as one cached DAG."""

__version__ = "0.1.0"
