"""Similar images: an index of a photo library kept up to date, search by image, near-duplicate groups.

- :mod:`effnet_cli.similar.store`: the index directory (vectors, manifest, settings; one generation committed at a time).
- :mod:`effnet_cli.similar.features`: what is compared: ``layout`` (default) or ``head`` rows.
- :mod:`effnet_cli.similar.build`: the incremental update (new or changed files embedded, deleted ones dropped).
- :mod:`effnet_cli.similar.search`: exact cosine search in blocks of the memory-mapped vectors.
- :mod:`effnet_cli.similar.groups`: near-duplicate groups and which member to keep.
- :mod:`effnet_cli.similar.query`: search and dedupe over an index or images embedded on the fly.
- :mod:`effnet_cli.similar.api`: :class:`Index`, the Python API.
"""

from effnet_cli.similar.api import Index
from effnet_cli.similar.features import DEFAULT_FEATURES, FEATURES
from effnet_cli.similar.groups import DEFAULT_THRESHOLDS, KEEP_RULES, Group

__all__ = ["DEFAULT_FEATURES", "DEFAULT_THRESHOLDS", "FEATURES", "Group", "Index", "KEEP_RULES"]
