"""Whether the Hugging Face hub answers, found out in seconds.

Without a network, huggingface_hub retries for half a minute before giving up.
One HEAD request in a daemon thread, with a short timeout, decides instead; the
command line starts it before importing torch so that the two overlap.
"""

from __future__ import annotations

import os
from typing import Any

PROBE_SECONDS = 2.5  # long enough for a slow link (a HEAD takes a few round trips), short enough to fail at once

_PROBES: dict[str, tuple[Any, list[bool], float]] = {}  # endpoint -> (thread, answered, started)


def env_true(name: str) -> bool:
    """Whether environment variable ``name`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def start_probe() -> None:
    """Start checking that the hub answers, in the background, before it is needed.

    The command line calls this before it imports torch, so that the probe and
    the import overlap; a load then waits only for what is left.
    """
    from huggingface_hub import constants as hub_constants

    if env_true("HF_HUB_OFFLINE") or hub_constants.HF_HUB_OFFLINE:
        return
    _PROBES.setdefault(hub_constants.ENDPOINT, _launch_probe(hub_constants.ENDPOINT))


def _launch_probe(endpoint: str) -> tuple[Any, list[bool], float]:
    # One HEAD request in a daemon thread, so that a resolver or a silent server cannot hold the run.
    import ssl
    import threading
    import time
    import urllib.error
    import urllib.request

    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=PROBE_SECONDS).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                answered.append(True)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, name="effnet-hub-probe", daemon=True)
    thread.start()
    return thread, answered, time.monotonic()


def unreachable(endpoint: str) -> str | None:
    """The hub's host when it gives no HTTP answer within PROBE_SECONDS, else None.

    Any answer counts, even an error status or a certificate the system does
    not trust: the hub client reports those itself. A probe started earlier
    (:func:`start_probe`) is used once; a later load probes afresh.
    """
    import time
    from urllib.parse import urlsplit

    thread, answered, started = _PROBES.pop(endpoint, None) or _launch_probe(endpoint)
    thread.join(max(0.0, PROBE_SECONDS - (time.monotonic() - started)))
    return None if answered else (urlsplit(endpoint).netloc or endpoint)
