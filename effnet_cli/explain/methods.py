"""The CAM methods ``effnet explain`` offers, by name; importable without torch or the CAM library."""

from __future__ import annotations

import importlib.util

from effnet_cli.errors import InputError

# Name on the command line -> class in pytorch_grad_cam. Gradient-free ones (scorecam, ablationcam,
# eigencam) run many more forwards (scorecam one per channel of the head: 1,280 for Lite0/B0).
METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}
DEFAULT_METHOD = "gradcam"
INSTALL_HINT = "effnet explain needs pytorch-grad-cam: pip install 'effnet-cli[explain]' (or pip install grad-cam)."


def check_method(name: str) -> str:
    """``name`` when it is one of :data:`METHODS` (any case), else a usage error listing them."""
    key = name.lower()
    if key not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}; got {name!r}.")
    return key


def require_library() -> None:
    """Refuse at once, with the install line, when pytorch-grad-cam is missing (found without importing it)."""
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        raise InputError(INSTALL_HINT)
