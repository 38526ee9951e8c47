"""The one layer every file effnet writes goes through.

- :mod:`effnet_cli.output.atomic`: publish a file or a directory whole or not at all
  (exclusive temporary beside the target, fsync, rename, fsync of the directory),
  with the modes a plain ``open()`` would give (``0o666 & ~umask``).
- :mod:`effnet_cli.output.lock`: one writer per output; a second one is refused at once.
- :mod:`effnet_cli.output.settings`: the settings a partial or finished output was made
  with, and the check that refuses to resume with other ones.
- :mod:`effnet_cli.output.npy`: the growing ``.npy`` of a run in progress.
- :mod:`effnet_cli.output.owned`: which files in a directory effnet wrote, so nothing
  else is ever deleted.
- :mod:`effnet_cli.output.faults`: a failed write (full disk, quota, read-only, permission, I/O
  error) as one line naming the output and the cause.
- :mod:`effnet_cli.output.targets`: the one rule for an output that already exists
  (refused, or with ``--overwrite`` replaced where effnet wrote it), checked from the
  arguments before anything loads.
"""

from effnet_cli.output.atomic import (
    atomic_file,
    create_exclusive,
    fsync_dir,
    fsync_file,
    make_dir,
    open_partial,
    publish_dir,
    publish_file,
    remove_own,
    remove_written,
    temp_dir,
    temporaries_of,
    write_bytes,
    write_text,
)
from effnet_cli.output.faults import cause_of, check_writable, write_error, writing
from effnet_cli.output.lock import OutputBusyError, OutputLock
from effnet_cli.output.owned import EXPORT_DIR_FILES, MODEL_DIR_FILES, foreign_files, owned_by
from effnet_cli.output.settings import (
    SettingsMismatchError,
    check_settings,
    settings_differences,
)

__all__ = [
    "atomic_file",
    "create_exclusive",
    "fsync_dir",
    "fsync_file",
    "make_dir",
    "open_partial",
    "publish_dir",
    "publish_file",
    "remove_own",
    "remove_written",
    "temp_dir",
    "temporaries_of",
    "write_bytes",
    "write_text",
    "EXPORT_DIR_FILES",
    "MODEL_DIR_FILES",
    "foreign_files",
    "owned_by",
    "cause_of",
    "check_writable",
    "write_error",
    "writing",
    "OutputBusyError",
    "OutputLock",
    "SettingsMismatchError",
    "check_settings",
    "settings_differences",
]
