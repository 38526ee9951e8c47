"""Class-activation heatmaps for any classifier effnet loads (``effnet explain``).

- :mod:`effnet_cli.explain.methods`: the method names and the install hint (no torch, no CAM library),
  so the command line checks ``--method`` before anything heavy loads.
- :mod:`effnet_cli.explain.cam`: the CAM itself, computed by pytorch-grad-cam (the ``explain`` extra)
  on the last convolution stage, and mapped back onto the input image's own pixels.
- :mod:`effnet_cli.explain.overlay`: the overlay PNG and the heatmap ``.npy``, as bytes.
- :mod:`effnet_cli.explain.run`: images in, one record per image out, files written through the
  output layer.
"""
