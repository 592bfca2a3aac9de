"""Model cards: the Hub's YAML header (library, task, licence, datasets, model-index) over our Markdown,
read back with huggingface_hub's own `ModelCard`, as the Hub reads it."""

from __future__ import annotations

import re

import pytest
import torch

import segformer
from segformer.checkpoint.card import card_body, card_metadata, card_text, find_card, licence_line
from segformer.cli import main
from segformer.models import build_model
from segformer.pretrained import PRETRAINED, pretrained_dir

from conftest import tiny_config

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import ModelCard, ModelCardData  # noqa: E402

TAG = "microsegformer-celebamask"
CELEBAMASK_TERMS = {
    "license": "other",
    "license_name": "celebamask-hq",
    "license_link": "https://github.com/switchablenorms/CelebAMask-HQ",
}


def scores_of(card: ModelCard) -> dict[str, float]:
    return {r.metric_name: r.metric_value for r in card.data.eval_results or []}


def test_shipped_card_has_the_hub_header_over_its_body():
    text = (pretrained_dir() / PRETRAINED[TAG].card).read_text()
    card = ModelCard(text)
    data = card.data
    assert (data.library_name, data.pipeline_tag) == ("segformer", "image-segmentation")
    assert {k: data.get(k) for k in CELEBAMASK_TERMS} == CELEBAMASK_TERMS
    assert data.datasets == ["CelebAMask-HQ"]
    assert data.model_name == TAG
    assert scores_of(card) == {"CE7454 F-score": 0.8035, "mIoU": 0.6095}
    (source,) = {r.source_name for r in data.eval_results}
    assert source == f"segformer eval {TAG} --data data/ce7454"
    # The body is the card as it was, and the header's figures are the body's own.
    assert card.text.lstrip().startswith(f"# {TAG}\n") and "## Known limits" in card.text
    assert "CE7454 F 0.8035, mIoU 0.6095" in card.text
    assert "non-commercial research" in card.text
    # A header as the Hub wants it: a valid ModelCardData round trip, library and task first.
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()
    assert text.startswith("---\nlibrary_name: segformer\npipeline_tag: image-segmentation\n")


def test_header_replaces_a_header_and_keeps_the_body():
    metadata = card_metadata("org/x", "celebamask", scores={"miou": 0.51234, "pixel_acc": 0.9}, command="cmd")
    once = card_text(metadata, "# x\n\nbody\n")
    assert card_text(metadata, once) == once and card_body(once) == "# x\n\nbody\n"
    card = ModelCard(once)
    assert scores_of(card) == {"mIoU": 0.5123, "pixel accuracy": 0.9}
    assert {r.source_url for r in card.data.eval_results} == {"#command"}


def test_licence_follows_the_data_or_is_given():
    for label_set in ("ade20k", "cityscapes", None):
        data = card_metadata("org/x", label_set)
        assert data.license is None and data.eval_results is None  # never invented, no empty model-index
    assert card_metadata("org/x", "ade20k").datasets == ["scene_parse_150"]
    given = ModelCard(card_text(card_metadata("org/x", "ade20k", licence="apache-2.0"), "# x\n")).data
    assert given.license == "apache-2.0" and given.license_name is None
    assert licence_line(ModelCard(card_text(card_metadata("org/x", "celebamask"), "# x\n"))) == (
        "other (celebamask-hq: https://github.com/switchablenorms/CelebAMask-HQ)"
    )


def test_export_pretrained_writes_the_header(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=19)).eval()
    model.meta = {
        "image_size": 32,
        "label_set": "celebamask",
        "epoch": 4,
        "scores": {"ce7454_f": 0.61, "miou": 0.42},
        "data": {"val_fraction": 0.1, "split_seed": 0},
    }
    run = tmp_path / "run"
    segformer.save(model, run / "best")
    (run / "config.yaml").write_text("model:\n  name: tiny\n")
    out = tmp_path / "tiny-faces.safetensors"
    assert main(["export", str(run / "best"), "--format", "pretrained", "--out", str(out)]) == 0
    card = ModelCard(out.with_suffix(".md").read_text())
    assert (card.data.library_name, card.data.pipeline_tag) == ("segformer", "image-segmentation")
    assert {k: card.data.get(k) for k in CELEBAMASK_TERMS} == CELEBAMASK_TERMS
    assert scores_of(card) == {"CE7454 F-score": 0.61, "mIoU": 0.42}
    assert {r.source_name for r in card.data.eval_results} == {
        f"segformer train --config {run / 'config.yaml'}"
    }
    assert card.text.lstrip().startswith("# tiny-faces\n")
    assert re.search(r"\{[a-z0-9_]+(:[^}]*)?\}", card.text) is None
    assert find_card(out) == out.with_suffix(".md")


def test_info_lists_classes_colours_and_licence(capsys):
    assert main(["info", TAG, "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "licence: other (celebamask-hq: https://github.com/switchablenorms/CelebAMask-HQ)" in out
    assert re.search(r"^\s+0\s+background\s+#000000\s+\(0, 0, 0\)$", out, re.MULTILINE)
    assert len(re.findall(r"^\s+\d+\s+\S+\s+#[0-9a-f]{6}\s+\(", out, re.MULTILINE)) == 19
    assert main(["info", TAG, "--size", "64", "--json"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"][1] == {"id": 1, "name": "skin", "colour": list(doc["classes"][1]["colour"])}
    assert doc["licence"].startswith("other (celebamask-hq")
