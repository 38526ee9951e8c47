"""Fine-tuning: train a classifier for your own labels from folders of images (``effnet finetune``).

The entry point is :func:`effnet_cli.finetune` (this package is not named
``finetune`` so that importing it never shadows that function on the
``effnet_cli`` module).

``dataset`` reads and checks the labelled images, ``recipe`` holds the
training recipe (new head, freezing, AdamW + warm-up/cosine, augmentation),
``loop`` runs it resumably and writes the output directory, ``report``
computes the validation numbers and pictures, ``files`` is the one place
files are written.
"""

from __future__ import annotations

from effnet_cli.training.loop import FinetuneOptions, FinetuneResult, finetune

__all__ = ["finetune", "FinetuneOptions", "FinetuneResult"]
