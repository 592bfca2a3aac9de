"""Model cards: a Markdown body under the Hugging Face Hub's YAML metadata header.

The header is what the Hub indexes: ``library_name: segformer``, ``pipeline_tag: image-segmentation``,
the licence, the training datasets and a ``model-index`` holding the measured scores and the command
that measured them. It is written with huggingface_hub's own `ModelCardData`, so that it reads back with
`ModelCard` exactly as the Hub reads it.

The licence and dataset follow from the model's label set: weights trained on CelebAMask-HQ inherit
its terms (non-commercial research and educational use only), which no SPDX identifier states, so the
card says ``license: other`` with a ``license_name`` and a ``license_link`` to the terms, as the Hub
asks for licences outside its list. Other label sets state no licence unless one is given.

A card sits beside what it describes: ``NAME.md`` next to a pretrained ``NAME.safetensors`` (the
package's shipped models), ``README.md`` inside a model directory or Hub repository (`find_card`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SegformerError

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

LIBRARY = "segformer"
PIPELINE_TAG = "image-segmentation"
CARD_FILE = "README.md"

# The data's terms bind the weights learnt from it (by label set name).
LICENCES: dict[str, dict[str, str]] = {
    "celebamask": {
        "license": "other",
        "license_name": "celebamask-hq",
        "license_link": "https://github.com/switchablenorms/CelebAMask-HQ",
    },
}
DATASETS: dict[str, str] = {
    "celebamask": "CelebAMask-HQ",
    "ade20k": "scene_parse_150",
    "cityscapes": "cityscapes",
}
# The scores a training record or `segformer eval` holds, as model-index metrics (type, display name).
METRICS: dict[str, tuple[str, str]] = {
    "ce7454_f": ("f1", "CE7454 F-score"),
    "miou": ("mean_iou", "mIoU"),
    "mean_f1_fg": ("f1", "mean F1 (foreground)"),
    "pixel_acc": ("accuracy", "pixel accuracy"),
}
ORDER = ["library_name", "pipeline_tag", "license", "license_name", "license_link", "datasets", "tags"]


def card_metadata(
    name: str,
    label_set: str | None,
    *,
    scores: Mapping[str, Any] | None = None,
    command: str | None = None,
    split: str = "validation",
    dataset_name: str | None = None,
    url: str | None = None,
    licence: str | None = None,
    library: str = LIBRARY,
) -> ModelCardData:
    """The Hub metadata of model `name` (a pretrained tag or ``org/name``) with label set `label_set`.

    `scores` (``miou``, ``ce7454_f``, ... as `segformer eval` and training records name them) become a
    ``model-index`` result whose source is `command`, the command that measured them, linked to `url`
    (where the command is documented; default ``#command``, the card's own section). `licence` (a Hub
    licence id such as ``apache-2.0``) replaces the one the label set implies.
    """
    from huggingface_hub import EvalResult, ModelCardData

    terms = {"license": licence} if licence else dict(LICENCES.get(label_set or "", {}))
    dataset = DATASETS.get(label_set or "")
    results = []
    for key, (metric, metric_name) in METRICS.items():
        value = (scores or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            continue
        results.append(
            EvalResult(
                task_type=PIPELINE_TAG,
                task_name="Semantic segmentation",
                dataset_type=dataset or label_set or "unknown",
                dataset_name=dataset_name or dataset or label_set or "unknown",
                dataset_split=split,
                metric_type=metric,
                metric_name=metric_name,
                metric_value=round(float(value), 4),
                source_name=command,
                source_url=(url or "#command") if command else None,
            )
        )
    tags = ["segformer", "semantic-segmentation"] + (["face-parsing"] if label_set == "celebamask" else [])
    return ModelCardData(
        library_name=library,
        pipeline_tag=PIPELINE_TAG,
        datasets=[dataset] if dataset else None,
        tags=tags,
        model_name=name if results else None,
        eval_results=results or None,
        **terms,
    )


def card_text(metadata: ModelCardData, body: str) -> str:
    """A card: the YAML header of `metadata`, then `body` (Markdown; any header it had is replaced)."""
    body = card_body(body).lstrip("\n")
    return f"---\n{metadata.to_yaml(original_order=ORDER)}\n---\n\n{body}"


def card_body(text: str) -> str:
    """`text` without its YAML header, if any (and the blank lines after it)."""
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end != -1:
            return text[end + 5 :].lstrip("\n")
    return text


def find_card(path: str | Path) -> Path | None:
    """The model card of a local model: ``NAME.md`` beside a file, ``README.md`` in a folder."""
    path = Path(path)
    card = path / CARD_FILE if path.is_dir() else path.with_suffix(".md")
    return card if card.is_file() else None


def read_card(path: str | Path) -> Any:
    """The `ModelCard` of file `path`; an unreadable or malformed header is a `SegformerError`."""
    from huggingface_hub import ModelCard

    try:
        return ModelCard(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SegformerError(f"{path}: cannot read as a model card ({err})") from None


def licence_line(card: Any) -> str:
    """The licence a `ModelCard` states, in one line (``other (celebamask-hq: https://...)``)."""
    data = card.data
    if not data.license:
        return "not stated"
    extra = ": ".join(str(v) for v in (data.license_name, data.license_link) if v)
    return f"{data.license} ({extra})" if extra else str(data.license)


__all__ = [
    "CARD_FILE",
    "DATASETS",
    "LIBRARY",
    "LICENCES",
    "PIPELINE_TAG",
    "card_body",
    "card_metadata",
    "card_text",
    "find_card",
    "licence_line",
    "read_card",
]
