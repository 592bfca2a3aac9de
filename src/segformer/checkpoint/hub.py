"""Models on the Hugging Face Hub: ``org/name`` (``org/name@revision``) as a model argument, and uploads.

A repository holds what `segformer.save` writes (a native model directory) or a transformers SegFormer
directory; `snapshot` fetches the files `segformer.load` reads into huggingface_hub's cache and returns
the snapshot folder, which then loads like any local directory. huggingface_hub does the work (cache
layout, tokens, retries); this module only chooses the files and turns its errors into one line.

The cache and offline mode follow huggingface_hub's variables: ``HF_HUB_CACHE`` (else
``HF_HOME/hub``) and ``HF_HUB_OFFLINE``. huggingface_hub reads them once, at import; they are read
again at each call here, so that a process that sets them later (a test, a notebook) is honoured too.
With ``HF_HUB_OFFLINE=1`` nothing goes on the network and an id must already be in the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import SegformerError

# The files `load` reads from a repository: a native or HF directory, safetensors first, and the card.
# PyTorch .bin weights are fetched only when a repository has no safetensors (NVIDIA's own SegFormer
# repositories hold pytorch_model.bin and tf_model.h5: the latter is never downloaded).
METADATA_FILES = ["config.json", "preprocessor_config.json", "README.md"]
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
BIN_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]

_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")
# A name ending in a file extension names a file (``runs/x.pth``, ``photos/a.jpg``), never a repository.
_FILE = re.compile(
    r"\.(pth|pt|bin|ckpt|safetensors|onnx|json|ya?ml|npy|npz|jpe?g|png|bmp|webp|tiff?|gif|"
    r"mp4|avi|mov|mkv|webm|m4v|mpe?g|wmv)$",
    re.IGNORECASE,
)


def parse_hub_id(name: Any) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of ``org/name`` or ``org/name@revision`` (revision None: main), or None
    when `name` is not spelled like a model repository (see `is_hub_id`)."""
    if not isinstance(name, (str, Path)):
        return None
    match = _ID.fullmatch(str(name))
    if match is None or _FILE.search(match["repo"]):
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(match["repo"])
    except HFValidationError:
        return None
    return match["repo"], match["revision"]


def is_hub_id(name: Any) -> bool:
    """Whether `name` is a Hub model id rather than a path: ``org/name`` or ``org/name@revision``
    that is not an existing path and does not end in a file extension."""
    return parse_hub_id(name) is not None and not Path(name).exists()


def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "TRUE", "YES"}


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or transformers' ``TRANSFORMERS_OFFLINE``) as set now."""
    return _true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def cache_dir() -> Path:
    """huggingface_hub's model cache as the environment names it now: ``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else its default (``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _fetch_command(repo_id: str, revision: str | None) -> str:
    return f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")


def snapshot(name: str) -> Path:
    """The local folder of Hub id `name` (``org/name[@revision]``), downloaded into the cache unless
    it is there already (offline: only from the cache). Every failure is one `SegformerError` line."""
    parsed = parse_hub_id(name)
    if parsed is None:
        raise SegformerError(f"{name}: not a Hugging Face Hub model id (expected org/name[@revision])")
    repo_id, revision = parsed
    from huggingface_hub import errors, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # A cached snapshot missing requested files (huggingface_hub 1.x and later; earlier, the files).
    incomplete = getattr(errors, "IncompleteSnapshotError", LocalEntryNotFoundError)

    offline = is_offline()
    cache = cache_dir()

    def download(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                local_files_only=offline,
                allow_patterns=patterns,
            )
        )

    where = f"{name}: no local path of that name, and the Hugging Face Hub repository {repo_id}"
    try:
        folder = download(METADATA_FILES + SAFETENSORS_FILES)
        if not any((folder / f).is_file() for f in SAFETENSORS_FILES[:2]):
            folder = download(METADATA_FILES + BIN_FILES)
    except GatedRepoError:
        raise SegformerError(
            f"{where} is gated: accept its conditions on huggingface.co and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise SegformerError(
            f"{where} was not found (or is private: log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise SegformerError(f"{where} has no revision {revision!r}") from None
    except (LocalEntryNotFoundError, incomplete):
        if offline:
            raise SegformerError(
                f"{where} is not in the local cache ({cache}) and HF_HUB_OFFLINE is set: fetch it where "
                f"the Hub is reachable with `{_fetch_command(repo_id, revision)}` (same HF_HUB_CACHE), "
                "or unset HF_HUB_OFFLINE"
            ) from None
        raise SegformerError(
            f"{where} cannot be reached and is not in the local cache ({cache}); check the network, "
            f"or fetch it elsewhere with `{_fetch_command(repo_id, revision)}`"
        ) from None
    except HfHubHTTPError as err:
        raise SegformerError(f"{name}: Hugging Face Hub error: {_first_line(err)}") from None
    if not (folder / "config.json").is_file():
        raise SegformerError(
            f"{name}: the Hub repository holds no config.json: neither a segformer model directory nor a "
            "transformers SegFormer directory"
        )
    return folder


def upload(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload the files of `folder` to model repository `repo_id` (created if missing; branch
    `revision` created if missing) in one commit; returns the commit's URL."""
    if parse_hub_id(repo_id) is None or "@" in repo_id:
        raise SegformerError(f"{repo_id}: not a Hugging Face Hub model id (expected org/name)")
    if is_offline():
        raise SegformerError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=message or "Upload segformer model",
        )
    except LocalTokenNotFoundError:
        raise SegformerError(
            f"cannot push to {repo_id}: not logged in (`hf auth login` or set HF_TOKEN)"
        ) from None
    except HfHubHTTPError as err:
        raise SegformerError(f"cannot push to {repo_id}: {_first_line(err)}") from None
    except Exception as err:  # the HTTP client's own errors (no connection, proxy, TLS): one line
        raise SegformerError(f"cannot push to {repo_id}: {type(err).__name__}: {_first_line(err)}") from err
    return str(commit.commit_url)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


__all__ = ["cache_dir", "is_hub_id", "is_offline", "parse_hub_id", "snapshot", "upload"]
