"""The transformers-compatible core: config, image processor, model and their loading."""
