"""`push_model`: a model directory and its card, uploaded to a Hugging Face Hub model repository.

The repository then holds what `segformer.save` writes (``config.json`` + ``model.safetensors``), or
with ``format="hf"`` a transformers SegFormer directory (with its ``preprocessor_config.json``), and the
card ``README.md``: the Hub's metadata header (`segformer.checkpoint.card`) over the body of the card
the model already has (a pretrained tag's, a model directory's ``README.md``), or over a body written
here from the model's record. Anyone then loads it with ``segformer.load("org/name")``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from .. import __version__
from ..checkpoint import load, resolve_model, save, unwrap
from ..checkpoint.card import (
    CARD_FILE,
    LICENCES,
    card_metadata,
    card_text,
    find_card,
    read_card,
)
from ..checkpoint.hub import is_offline, parse_hub_id, upload
from ..config import ModelConfig
from ..errors import SegformerError
from ..fileio import MANIFEST_NAME
from ..inference.settings import InferenceSettings, model_settings


def _library(format: str) -> str:
    """The Hub's library of a repository: a transformers directory is transformers' to load."""
    return "transformers" if format == "hf" else "segformer"


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def card_for_hub(
    model: nn.Module,
    repo_id: str,
    settings: InferenceSettings,
    *,
    format: str = "native",
    recipe: Path | None = None,
    licence: str | None = None,
) -> str:
    """A card for `model` in repository `repo_id`, written from its record: how to load it, its
    settings and scores (from training's validation record), its classes and colours, its licence;
    the Hub's metadata header on top (`card_metadata`)."""
    config: ModelConfig = model.config
    meta = dict(getattr(model, "meta", None) or {})
    scores, data = meta.get("scores") or {}, meta.get("data") or {}
    label_set = settings.label_set
    assert label_set is not None  # resolved by model_settings
    command = f"segformer train --config {recipe}" if recipe is not None and recipe.is_file() else None
    split = (
        f"seeded hold-out of the training data (val_fraction {data['val_fraction']}, split_seed "
        f"{data.get('split_seed')})"
        if data.get("val_fraction")
        else "validation split"
    )
    metadata = card_metadata(
        repo_id,
        label_set.name,
        scores=scores,
        command=command or "segformer train",
        dataset_name=f"{split}, epoch {meta.get('epoch', '?')} of training",
        url=f"https://huggingface.co/{repo_id}#command",
        licence=licence,
        library=_library(format),
    )
    params = sum(p.numel() for p in model.parameters())
    h, w = settings.image_size
    if format == "hf":
        use = (
            "A transformers SegFormer directory, written by `segformer push --format hf`:\n\n"
            f'```python\nfrom transformers import pipeline\n\nparse = pipeline("image-segmentation", '
            f'model="{repo_id}")\n```\n\n'
            f'segformer reads it too: `segformer.load("{repo_id}")`.'
        )
    else:
        use = (
            "A segformer model directory (`config.json` + `model.safetensors`), written by "
            f"`segformer push` (segformer {__version__}):\n\n"
            f'```python\nimport segformer\n\nmodel = segformer.load("{repo_id}")\n'
            f'masks = segformer.Predictor("{repo_id}")("photo.jpg")\n```\n\n'
            f"or from the shell: `segformer predict {repo_id} IMAGES --out DIR`."
        )
    rows = [
        f"| architecture | {config.arch}, {params:,} parameters, {config.num_classes} classes |",
        f"| working size | {h}x{w} px, {settings.eval_mode}, TTA {settings.tta} |",
    ]
    for result in metadata.eval_results or []:
        rows.append(f"| {result.metric_name} | {result.metric_value} ({result.dataset_name}) |")
    classes = "\n".join(
        f"| {i} | {name} | `{_hex(rgb)}` |"
        for i, (name, rgb) in enumerate(zip(label_set.class_names, label_set.palette, strict=True))
    )
    if licence:
        terms = f"`{licence}`."
    elif label_set.name in LICENCES:
        terms = (
            "Trained for the classes of CelebAMask-HQ, which is for **non-commercial research and "
            "educational use only**; so are weights trained on it "
            f"({LICENCES[label_set.name]['license_link']}). Do not use this model commercially."
        )
    else:
        terms = "Not stated: set `license` in this card's header before sharing the weights."
    commands = "\n".join(c for c in (command, f"segformer push MODEL {repo_id}") if c)
    body = (
        f"# {repo_id}\n\n{use}\n\n| | |\n|---|---|\n" + "\n".join(rows) + "\n\n"
        f"## Classes\n\n| id | class | colour |\n|---|---|---|\n{classes}\n\n"
        f"## Licence\n\n{terms}\n\n## Command\n\n```\n{commands}\n```\n"
    )
    return card_text(metadata, body)


def push_model(
    model: str | Path | nn.Module,
    repo_id: str,
    *,
    format: str = "native",
    private: bool | None = None,
    revision: str | None = None,
    message: str | None = None,
    token: str | None = None,
    licence: str | None = None,
) -> dict[str, Any]:
    """Upload `model` (a module, or anything `segformer.load` reads) to model repository `repo_id` as
    a model directory (`format` ``native`` or ``hf``) with its card, in one commit to branch
    `revision` (default main). Returns the commit URL and the uploaded files."""
    if parse_hub_id(repo_id) is None or "@" in repo_id:
        raise SegformerError(f"{repo_id}: not a Hugging Face Hub model id (expected org/name)")
    if is_offline():
        raise SegformerError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set")
    source = resolve_model(model) if isinstance(model, (str, Path)) else None
    torch_model = unwrap(load(source) if source is not None else model)
    settings = model_settings(torch_model, source=str(source) if source else None)
    existing = find_card(source) if source is not None else None
    assert settings.label_set is not None  # resolved by model_settings
    if existing is not None:  # the model's own card: its body, measured scores and licence are kept
        old = read_card(existing)
        metadata = card_metadata(repo_id, settings.label_set.name, licence=licence, library=_library(format))
        if licence is None and old.data.license:
            for key in ("license", "license_name", "license_link"):
                metadata[key] = old.data.get(key)
        if old.data.eval_results:
            metadata.model_name, metadata.eval_results = repo_id, old.data.eval_results
        text = card_text(metadata, old.text)
    else:
        recipe = source.parent / "config.yaml" if source is not None else None
        text = card_for_hub(torch_model, repo_id, settings, format=format, recipe=recipe, licence=licence)
    with tempfile.TemporaryDirectory(prefix="segformer-push-") as tmp:
        folder = Path(tmp) / "model"
        # Where the model was loaded from (a local cache path) is nobody else's business.
        own_meta = getattr(torch_model, "meta", None)
        torch_model.meta = {
            **{k: v for k, v in (own_meta or {}).items() if k not in ("source", "source_format")},
            **settings.to_dict(),
        }
        try:
            save(torch_model, folder, format=format)
        finally:
            torch_model.meta = own_meta
        (folder / MANIFEST_NAME).unlink()  # the output policy's record of this temporary folder stays here
        (folder / CARD_FILE).write_text(text, encoding="utf-8")
        files = sorted(p.name for p in folder.iterdir())
        url = upload(folder, repo_id, revision=revision, private=private, message=message, token=token)
    return {"url": url, "repo_id": repo_id, "files": files}
