"""``--report`` pages: one self-contained HTML file (thumbnails embedded, no network) per run.

- :mod:`effnet_cli.report.page`: the page's parts (cards, sections, figures), thumbnails as data URIs,
  rendering the Jinja2 template ``effnet_cli/resources/report.html.j2`` and publishing the file through
  the output layer.
- :mod:`effnet_cli.report.classify`: ``classify --report``, built as the records stream out.

Nothing here imports torch: ``classify``'s torch-free path can write a report.
"""
