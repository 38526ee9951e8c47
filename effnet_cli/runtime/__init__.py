"""Running a model: the engine, backend choice, export, ONNX Runtime / OpenVINO runners and the
fused PyTorch path."""
