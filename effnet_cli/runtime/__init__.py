"""Running a model, one way down: ``engine`` (Engine, classify_paths, embed_paths) -> ``backends``
(which backend runs, auto's measurement) -> ``cache`` (exports made once, reused) -> ``export`` (the
ONNX / OpenVINO writer) -> ``runners`` (an export in ONNX Runtime or OpenVINO); ``fused`` is the fast
PyTorch path (:func:`effnet_cli.optimize`)."""
