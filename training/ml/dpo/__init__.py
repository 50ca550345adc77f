"""Diffusion-DPO (Wallace et al., 2023): fine-tuning from preferred/rejected image pairs, no reward model.

- ``config.py``: :class:`DPOConfig` (validated, JSON round-trippable);
- ``losses.py``: the loss and the implicit reward accuracy as small pure functions;
- ``trainer.py``: :class:`DPOTrainer` over the same :class:`~training.ml.refl.adapters.DiffusionAdapter`
  as ReFL, with a frozen reference and checkpoints that ``apply_refl_checkpoint`` applies like ReFL's.
"""
