"""``effnet convert``: checkpoints of other libraries -> a directory ``load_pretrained`` loads.

One module per source library (:mod:`.hf`, :mod:`.torchvision`, :mod:`.timm`,
:mod:`.efficientnet_pytorch`, :mod:`.keras`) decides the architecture, config,
rename table and preprocessing of a checkpoint. The four steps they share are
one module each: :mod:`.renames` (rename table, permutes), :mod:`.shapes` (shape
check), :mod:`.verify` (output check); :mod:`.variants` picks a variant from
shapes, :mod:`.plan` holds the data types, and :mod:`.pipeline` reads the file,
picks the source, runs the steps and writes the result atomically::

    report = convert_checkpoint("tf_efficientnet_b3.safetensors", "b3/", source="timm",
                                arch="tf_efficientnet_b3", verify=True)
    report.verify.max_rel_diff   # largest |ours - timm's| / max |timm's| on a random input

The output directory holds ``config.json``, ``model.safetensors`` and a
``preprocessor_config.json`` with the source's own preprocessing.
"""

from effnet_cli.convert.pipeline import (
    SOURCES,
    ConversionReport,
    build_model,
    convert_checkpoint,
    detect_source,
    publish_directory,
    read_checkpoint,
    source_module,
)
from effnet_cli.convert.verify import VERIFY_TOLERANCE, VerifyResult, verify_conversion

__all__ = ["SOURCES", "ConversionReport", "VerifyResult", "convert_checkpoint", "detect_source", "read_checkpoint",
           "source_module", "verify_conversion", "build_model", "publish_directory", "VERIFY_TOLERANCE"]
