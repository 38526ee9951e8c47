"""The published EfficientNets: their compound scaling, reported accuracy and hub repository."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One published EfficientNet: its scaling and the numbers the paper reports."""

    name: str
    width_coefficient: float
    depth_coefficient: float
    image_size: int
    dropout_rate: float
    top1: float  # ImageNet top-1 (%) as published (paper for B, TF-Lite README for Lite)
    lite: bool = False

    @property
    def hub_id(self) -> str | None:
        """The Hugging Face hub repository of the official weights, when there is one."""
        return None if self.lite else f"google/efficientnet-{self.name}"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("b0", 1.0, 1.0, 224, 0.2, 77.1),
        Variant("b1", 1.0, 1.1, 240, 0.2, 79.1),
        Variant("b2", 1.1, 1.2, 260, 0.3, 80.1),
        Variant("b3", 1.2, 1.4, 300, 0.3, 81.6),
        Variant("b4", 1.4, 1.8, 380, 0.4, 82.9),
        Variant("b5", 1.6, 2.2, 456, 0.4, 83.6),
        Variant("b6", 1.8, 2.6, 528, 0.5, 84.0),
        Variant("b7", 2.0, 3.1, 600, 0.5, 84.3),
        Variant("lite0", 1.0, 1.0, 224, 0.2, 75.1, lite=True),
        Variant("lite1", 1.0, 1.1, 240, 0.2, 76.7, lite=True),
        Variant("lite2", 1.1, 1.2, 260, 0.3, 77.6, lite=True),
        Variant("lite3", 1.2, 1.4, 280, 0.3, 79.8, lite=True),
        Variant("lite4", 1.4, 1.8, 300, 0.3, 81.5, lite=True),
    )
}
B_VARIANTS = tuple(name for name, v in VARIANTS.items() if not v.lite)
LITE_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.lite)


def hub_id_for(name: str) -> str | None:
    """The hub repository a short variant name stands for (``b3`` -> ``google/efficientnet-b3``,
    ``v2-s`` -> ``timm/tf_efficientnetv2_s.in21k_ft_in1k``)."""
    from effnet_cli.weights.variants_v2 import V2_VARIANTS

    variant = VARIANTS.get(name.lower())
    if variant is None and name.lower() in V2_VARIANTS:
        return V2_VARIANTS[name.lower()].hub_id
    return variant.hub_id if variant else None
