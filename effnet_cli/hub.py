"""Loading and saving weights, under the names the docs and earlier releases use.

Nothing is defined here. ``load_pretrained`` (model + processor, strict) lives in
:mod:`effnet_cli.core.loading`; a model directory's writing and checks in
:mod:`effnet_cli.core.checkpoint`; names, files, tensors and the hub cache in
:mod:`effnet_cli.weights`.
"""

from effnet_cli.core.checkpoint import align_prefix, config_json, load_weights, save_pretrained
from effnet_cli.core.loading import default_processor, load_directory, load_model, load_pretrained
from effnet_cli.weights.files import CONFIG_NAME, PICKLE_NAME, PROCESSOR_NAME, SAFETENSORS_NAME
from effnet_cli.weights.presets import HUB_STD_SQRT, IMAGENET_MEAN
from effnet_cli.weights.probe import start_probe
from effnet_cli.weights.resolve import cache_root, resolve_files
from effnet_cli.weights.state_dict import read_state_dict
from effnet_cli.weights.variants import hub_id_for

__all__ = [
    "CONFIG_NAME", "HUB_STD_SQRT", "IMAGENET_MEAN", "PICKLE_NAME", "PROCESSOR_NAME", "SAFETENSORS_NAME",
    "align_prefix", "cache_root", "config_json", "default_processor", "hub_id_for", "load_directory",
    "load_model", "load_pretrained", "load_weights", "read_state_dict", "resolve_files", "save_pretrained",
    "start_probe",
]
