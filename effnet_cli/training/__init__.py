"""Fine-tuning: train a classifier for your own labels from folders of images (``effnet finetune``).

The entry point is :func:`effnet_cli.finetune` (this package is not named
``finetune`` so that importing it never shadows that function on the
``effnet_cli`` module).

``options`` holds the run's settings and their defaults, ``dataset`` reads
and checks the labelled images, ``inputs`` splits them and computes features,
``recipe`` holds the training recipe (new head, freezing, AdamW +
warm-up/cosine, augmentation), ``loop`` runs it, ``state`` is the loop's
state and its checkpoint (so a run resumes), ``outputs`` scores the result
and writes the output directory, ``report`` computes the validation numbers
and pictures, ``files`` is the one place files are written.
"""

from __future__ import annotations

from effnet_cli.training.loop import finetune
from effnet_cli.training.options import FinetuneOptions, FinetuneResult

__all__ = ["finetune", "FinetuneOptions", "FinetuneResult"]
