"""Student stage: multi-task distillation (and its baselines) on Ray Train + DeepSpeed.

config (typed config) -> data (rows, validation, fractions) -> collate/losses (per method) ->
loop (one worker) -> trainer (TorchTrainer, checkpoints, export) -> evaluate (label-only).
"""
