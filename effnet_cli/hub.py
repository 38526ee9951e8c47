"""Loading and saving weights: variant names, hub repositories and local directories.

``load_pretrained`` turns a name into files (the bundled Lite0 weights, the
Hugging Face cache through huggingface_hub, or a local directory), reads the
tensors safely (safetensors first; pickles only through ``weights_only=True``),
checks every tensor against the model, and returns the model in eval mode with
the preprocessing that travels with the weights.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet_cli.core.config import VARIANTS, EfficientNetConfig
from effnet_cli.errors import ConfigError, OfflineError, UnsafeCheckpointError, WeightsError

if TYPE_CHECKING:
    import torch

    from effnet_cli.core.model import EfficientNetPreTrainedModel
    from effnet_cli.core.processor import EfficientNetImageProcessor

CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"

# The preprocessing of google/efficientnet-b*'s preprocessor_config.json, used when a
# checkpoint ships without one: nearest resize to the native size, ImageNet mean, and
# the square roots of ImageNet's std with include_top dividing by them twice.
HUB_STD_SQRT = [0.47853944, 0.4732864, 0.47434163]
IMAGENET_MEAN = [0.485, 0.456, 0.406]


def cache_root() -> Path:
    """effnet's own cache (converted bundled weights): ``$EFFNET_CACHE``, else ``$XDG_CACHE_HOME/effnet``."""
    env = os.environ.get("EFFNET_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "effnet"


def hub_id_for(name: str) -> str | None:
    """The hub repository a short variant name stands for (``b3`` -> ``google/efficientnet-b3``)."""
    variant = VARIANTS.get(name.lower())
    return variant.hub_id if variant else None


# ------------------------------------------------------------------ tensors
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors without running any code from the file.

    ``.safetensors`` files are read directly. Anything else is treated as a
    torch pickle and read with ``torch.load(weights_only=True)``, which refuses
    any object other than tensors and plain containers; a file that would need
    more is rejected with :class:`UnsafeCheckpointError` before anything runs.
    Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``)
    are unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"No weights file at {path}.")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file (truncated or corrupt: {exc}).") from None
    if path.suffix in (".h5", ".keras"):
        raise WeightsError(f"{path} is a Keras file; convert it first with `effnet convert {path} --from keras -o DIR`.")
    if not head.startswith(b"PK\x03\x04") and head[:1] != b"\x80":
        # torch.save writes a zip archive (or, before torch 1.6, a pickle of protocol 2 and up).
        raise WeightsError(f"{path} is not a PyTorch checkpoint: it is neither a zip archive nor a pickle "
                           f"(it starts with {head!r}).")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not read; the outcome below says all a user needs.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files; each becomes one sentence
        calls = _pickle_calls(path)
        if calls:
            raise UnsafeCheckpointError(
                f"{path} is a pickle that would run {', '.join(calls[:3])} when loaded, so it was refused; "
                f"ask for a safetensors file instead."
            ) from None
        raise WeightsError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: "
                           f"{_first_sentence(exc)}).") from None
    return _unwrap_state_dict(data, path)


def _pickle_calls(path: Path) -> list[str]:
    """The callables outside torch and collections that the checkpoint's pickle names, read without running it."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    calls: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                calls.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                calls.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was read up to the damage
        pass
    harmless = ("torch.", "collections.OrderedDict", "_codecs.encode")
    return list(dict.fromkeys(c for c in calls if not c.startswith(harmless)))


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    end = text.find(". ")
    return (text[:end] if end > 0 else text).rstrip(".")


def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    # safetensors starts with a little-endian u64 header length, then '{'.
    if len(head) < 8 or path.suffix in (".bin", ".pth", ".pt", ".ckpt"):
        return False
    size = int.from_bytes(head, "little")
    return 0 < size < path.stat().st_size


def _unwrap_state_dict(data: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(data, dict) and key in data and isinstance(data[key], dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise WeightsError(f"{path} holds no state dict of tensors.")
    out = {}
    for key, value in data.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        out[str(key).removeprefix("module.")] = value
    return out


def align_prefix(model: EfficientNetPreTrainedModel, state_dict: dict[str, torch.Tensor], *,
                 drop_head: bool) -> dict[str, torch.Tensor]:
    """``state_dict`` with the ``efficientnet.`` prefix added or removed to fit ``model``, as transformers does.

    A base-model checkpoint fits a classifier (prefix added); a classifier's fits a base model
    (prefix removed). ``drop_head`` then drops the classifier's own tensors instead of keeping
    them under their names (where a loader reports them as unexpected).
    """
    prefix = model.base_model_prefix + "."
    wants_prefix = any(k.startswith(prefix) for k in model.state_dict())
    has_prefix = any(k.startswith(prefix) for k in state_dict)
    if wants_prefix and not has_prefix:
        return {prefix + k: v for k, v in state_dict.items()}
    if has_prefix and not wants_prefix:
        return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix) or not drop_head}
    return state_dict


def load_weights(model: EfficientNetPreTrainedModel, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Copy ``state_dict`` into ``model`` after checking every name and shape.

    Accepts a base-model checkpoint for a classifier (and vice versa) the way
    transformers does, by adding or dropping the ``efficientnet.`` prefix; any
    other mismatch is an error that names the tensors, never a partial load.
    """
    expected = model.state_dict()
    state_dict = align_prefix(model, state_dict, drop_head=True)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state_dict[k].shape)} (model has {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    problems = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} {what} tensor(s): {shown}")
    if problems:
        raise WeightsError(f"{source} does not fit this model's config: " + "; ".join(problems) + ".")
    model.load_state_dict(state_dict, strict=True)


def config_json(model: EfficientNetPreTrainedModel, **overrides: Any) -> str:
    """The config.json text of a saved model: its config, ``architectures`` (unless it names one) and ``overrides``."""
    config = dict(model.config.to_dict())
    config.setdefault("architectures", [type(model).__name__])
    config.update(overrides)
    return json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def save_pretrained(model: EfficientNetPreTrainedModel, directory: str | Path,
                    processor: EfficientNetImageProcessor | None = None) -> Path:
    """Write config.json, model.safetensors and (when given) preprocessor_config.json to ``directory``."""
    from safetensors.torch import save

    from effnet_cli.output import make_dir, write_bytes, write_text

    directory = make_dir(directory)
    write_text(directory / CONFIG_NAME, config_json(model))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Through the output layer (atomic, umask modes), not safetensors' own file writer.
    write_bytes(directory / SAFETENSORS_NAME, save(tensors, metadata={"format": "pt"}))
    if processor is not None:
        processor.to_json_file(directory / PROCESSOR_NAME)
    return directory


# ------------------------------------------------------------------ resolve
def resolve_files(name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                  local_files_only: bool | None = None) -> tuple[Path, dict[str, str]]:
    """Find a loadable directory for a variant name, hub id or local path.

    Returns the directory and a description of where it came from
    (``{"source": "hub", "repo_id": ..., "revision": <commit>}`` and so on), so
    runs can report exactly which weights they used.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path, {"source": "local", "path": str(path)}
    if path.is_file():
        if path.name == CONFIG_NAME:
            return path.parent, {"source": "local", "path": str(path.parent)}
        raise WeightsError(f"{path} is a file; give the directory that holds config.json, or convert it with `effnet convert`.")
    key = text.lower()
    if key == "lite0":
        from effnet_cli.convert.bundled import ensure_lite0

        directory = ensure_lite0(cache_root())
        return directory, {"source": "bundled", "name": "lite0", "path": str(directory)}
    if key in VARIANTS and VARIANTS[key].lite:
        raise WeightsError(
            f"No pretrained {key} weights ship with effnet; convert timm's tf_efficientnet_{key} checkpoint "
            f"with `effnet convert CKPT --from timm --arch tf_efficientnet_{key} -o DIR` and use --model DIR."
        )
    repo_id = hub_id_for(key) or text
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "/" not in repo_id:
        raise WeightsError(
            f"{text!r} is neither a directory, a variant ({', '.join(VARIANTS)}) nor a hub id like google/efficientnet-b0."
        )
    return _download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)


def _download(repo_id: str, *, revision: str | None, cache_dir: str | Path | None,
              local_files_only: bool | None) -> tuple[Path, dict[str, str]]:
    """The snapshot folder of ``repo_id`` holding config, preprocessing and weights, all from one commit.

    The hub is probed first with a short connection attempt: without a network,
    huggingface_hub would retry for half a minute before giving up. Unreachable
    means the local cache, exactly as ``HF_HUB_OFFLINE=1`` would.
    """
    from huggingface_hub import constants as hub_constants

    pinned = f"{repo_id}{'@' + revision if revision else ''}"
    offline = bool(local_files_only) or _env_true("HF_HUB_OFFLINE") or bool(hub_constants.HF_HUB_OFFLINE)
    why = "HF_HUB_OFFLINE is set" if offline else None
    if not offline:
        host = _unreachable(hub_constants.ENDPOINT)
        if host is not None:
            offline, why = True, f"{host} cannot be reached"
    fix = (f"download it once with `hf download {repo_id}`"
           + ("" if why == "HF_HUB_OFFLINE is set" else ", set HF_HUB_OFFLINE=1 to use only the cache")
           + ", or give a local directory with --model DIR")
    with _quiet_hub_logs():
        # config.json and the preprocessing and safetensors weights where the repository has them: one
        # call resolves the revision to a commit once, and everything below comes from that commit.
        directory = _snapshot(repo_id, revision, [CONFIG_NAME, PROCESSOR_NAME, SAFETENSORS_NAME], cache_dir,
                              offline, pinned, why, fix)
        if not (directory / SAFETENSORS_NAME).is_file():
            # Older repositories (google/efficientnet-b*) hold a pickle instead; fetch it from the same commit.
            directory = _snapshot(repo_id, directory.name, [PICKLE_NAME], cache_dir, offline, pinned, why, fix)
    if not (directory / CONFIG_NAME).is_file():
        raise WeightsError(f"{pinned} has no {CONFIG_NAME}; it is not a transformers-style model repository.")
    if not (directory / SAFETENSORS_NAME).is_file() and not (directory / PICKLE_NAME).is_file():
        raise WeightsError(f"{pinned} has neither {SAFETENSORS_NAME} nor {PICKLE_NAME}.")
    # The snapshot folder is named after the commit: report it so a run can be reproduced.
    return directory, {"source": "hub", "repo_id": repo_id, "revision": directory.name}


def _snapshot(repo_id: str, revision: str | None, patterns: list[str], cache_dir: str | Path | None,
              offline: bool, pinned: str, why: str | None, fix: str) -> Path:
    """``snapshot_download`` restricted to ``patterns``, with its exceptions turned into effnet's one sentence."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import utils as hub_errors  # the error classes live here in every release since 0.20

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                      local_files_only=offline))
    # LocalEntryNotFoundError subclasses EntryNotFoundError (an HTTP error in older releases): test it first.
    except hub_errors.LocalEntryNotFoundError:
        reason = why or "the hub could not be reached"
        raise OfflineError(f"{pinned} is not in the local Hugging Face cache and {reason}; {fix}.") from None
    except hub_errors.RevisionNotFoundError:
        raise WeightsError(f"{repo_id} has no revision {revision!r}.") from None
    except hub_errors.RepositoryNotFoundError:
        raise WeightsError(f"{repo_id} is not a hub repository you can access (check the name, or set HF_TOKEN).") from None
    except hub_errors.HfHubHTTPError as exc:
        raise WeightsError(f"The hub refused {pinned}: {_first_line(exc)}.") from None
    except OSError as exc:
        raise OfflineError(f"{pinned} could not be fetched ({_first_line(exc)}); {fix}.") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


PROBE_SECONDS = 2.5  # long enough for a slow link (a HEAD takes a few round trips), short enough to fail at once


_PROBES: dict[str, tuple[Any, list[bool], float]] = {}  # endpoint -> (thread, answered, started)


def start_probe() -> None:
    """Start checking that the hub answers, in the background, before it is needed.

    The command line calls this before it imports torch, so that the probe and
    the import overlap; :func:`load_pretrained` then waits only for what is left.
    """
    from huggingface_hub import constants as hub_constants

    if _env_true("HF_HUB_OFFLINE") or hub_constants.HF_HUB_OFFLINE:
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


def _unreachable(endpoint: str) -> str | None:
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


@contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    # huggingface_hub logs every retry as a warning; effnet reports the outcome in one line instead.
    import logging

    logger = logging.getLogger("huggingface_hub")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------- load
def default_processor(config: EfficientNetConfig) -> EfficientNetImageProcessor:
    """The hub's EfficientNet preprocessing at the config's native size, for checkpoints without one."""
    from effnet_cli.core.processor import EfficientNetImageProcessor

    size = {"height": config.image_size, "width": config.image_size}
    return EfficientNetImageProcessor(size=size, resample=0, do_center_crop=False, image_mean=IMAGENET_MEAN,
                                      image_std=HUB_STD_SQRT, include_top=True)


def load_directory(directory: Path, *, model_class: type | None = None
                   ) -> tuple[EfficientNetPreTrainedModel, EfficientNetImageProcessor]:
    """Build the model and processor a loadable directory describes."""
    from effnet_cli.core.model import EfficientNetForImageClassification
    from effnet_cli.core.processor import EfficientNetImageProcessor

    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise WeightsError(f"{directory} has no {CONFIG_NAME}.")
    try:
        config = EfficientNetConfig.from_json_file(config_path)
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    weights = directory / SAFETENSORS_NAME
    if not weights.is_file():
        weights = directory / PICKLE_NAME
    if not weights.is_file():
        raise WeightsError(f"{directory} has neither {SAFETENSORS_NAME} nor {PICKLE_NAME}.")
    cls = model_class or EfficientNetForImageClassification
    import torch

    with torch.device("meta"):
        model = cls(config)  # no time spent on random init that the weights replace
    model = model.to_empty(device="cpu")
    load_weights(model, read_state_dict(weights), source=str(weights))
    processor_path = directory / PROCESSOR_NAME
    processor = (EfficientNetImageProcessor.from_json_file(processor_path) if processor_path.is_file()
                 else default_processor(config))
    return model.eval(), processor


def load_pretrained(name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                    local_files_only: bool | None = None, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None, model_class: type | None = None,
                    torch_dtype: str | torch.dtype | None = None,
                    ) -> tuple[EfficientNetPreTrainedModel, EfficientNetImageProcessor]:
    """Load a model and its preprocessing by variant name, hub id, or local directory.

    ``name_or_path``: ``b0`` … ``b7`` (``google/efficientnet-b*`` on the hub),
    ``lite0`` (real ImageNet weights bundled with effnet, no network needed), a
    hub repository id, or a directory with config.json and model.safetensors (or
    pytorch_model.bin). Hub files go through huggingface_hub's cache
    (``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``); once cached,
    no network is used. The model is returned in eval mode; where the weights
    came from is in ``model.source`` (for the hub, the exact commit). ``torch_dtype``
    is transformers' older spelling of ``dtype``. Unlike ``from_pretrained``, any
    tensor that does not fit the model is an error here.
    """
    if dtype is None:
        dtype = torch_dtype
    directory, source = resolve_files(name_or_path, revision=revision, cache_dir=cache_dir,
                                      local_files_only=local_files_only)
    model, processor = load_directory(directory, model_class=model_class)
    model.source = source
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=_dtype(dtype))
    return model, processor


def load_model(name_or_path: str | Path, *, model_class: type, **kwargs: Any) -> EfficientNetPreTrainedModel:
    """``from_pretrained`` helper: :func:`load_pretrained` without the processor."""
    model, _ = load_pretrained(name_or_path, model_class=model_class, **kwargs)
    return model


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ConfigError(f"dtype must be one of float32, float16, bfloat16; got {dtype!r}.")
    return names[dtype]
