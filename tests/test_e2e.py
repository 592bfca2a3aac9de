"""End to end: synthetic faces -> train -> eval -> predict -> ONNX and CE7454 exports, all agreeing.

The model works at 32 px on 48 px images, so every step resizes and resizes back; `segformer eval`
scores and the scores of the PNGs `segformer predict` writes must then be the same numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segformer import Predictor
from segformer.cli import main
from segformer.data.io import load_image, load_mask
from segformer.data.labels import CELEBAMASK
from segformer.data.synthetic import write_synthetic_dataset
from segformer.metrics import SegmentationMetrics

from conftest import run_solution


def test_train_eval_predict_export(tmp_path, capsys):
    data = write_synthetic_dataset(
        tmp_path / "data", num=24, size=48, seed=0, val_fraction=0.25, progress=False
    )
    run, preds = tmp_path / "run", tmp_path / "preds"
    sets = [
        "model.embed_dims=[8,16,24,32]", "model.depths=[1,1,1,1]", "model.decoder_dim=16",
        f"data.root={data}", "data.img_size=32", "data.workers=0", "train.epochs=1", "train.batch_size=6",
        "train.warmup_epochs=0", "train.lr=0.003",
    ]  # fmt: skip
    assert main(["train", "--out", str(run), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 0
    best = run / "best"

    # eval
    capsys.readouterr()
    assert main(["eval", str(best), "--data", str(data), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["img_size"] == 32 and scores["num_images"] == 6

    # predict: score the written PNGs against the masks like evaluation does. Evaluation runs batches
    # of 4 in file order; predict does the same here, so even float rounding is identical.
    images = str(data / "val" / "images")
    assert (
        main(
            [
                "predict",
                "--whole-image",
                str(best),
                images,
                "--out",
                str(preds),
                "--batch-size",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    metrics = SegmentationMetrics(19, 255, 0, list(CELEBAMASK.class_names))
    stems = sorted(p.stem for p in (data / "val" / "masks").glob("*.png"))
    assert sorted(p.stem for p in preds.glob("*.png")) == stems
    for stem in stems:
        pred, truth = load_mask(preds / f"{stem}.png"), load_mask(data / "val" / "masks" / f"{stem}.png")
        assert pred.shape == truth.shape == (48, 48)
        metrics.update(torch.from_numpy(pred).long()[None], torch.from_numpy(truth).long()[None])
    ours = metrics.compute()
    for key in ("ce7454_f", "miou", "mean_f1_fg", "pixel_acc"):
        assert ours[key] == pytest.approx(scores[key], abs=1e-9), key

    # ONNX: the exported graph gives the same masks (up to exact near-ties)
    assert main(["export", str(best), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (
        main(
            [
                "predict",
                "--whole-image",
                str(tmp_path / "m.onnx"),
                images,
                "--out",
                str(tmp_path / "po"),
                "--quiet",
            ]
        )
        == 0
    )
    predictor = Predictor(best, faces=False)
    for stem in stems:
        _, probs = predictor(data / "val" / "images" / f"{stem}.jpg", return_probs=True)
        top2 = np.sort(probs, axis=0)[-2:]
        clear = top2[1] - top2[0] > 1e-5
        a, b = load_mask(tmp_path / "po" / f"{stem}.png"), load_mask(preds / f"{stem}.png")
        np.testing.assert_array_equal(a[clear], b[clear])

    # CE7454: run.py, alone in a folder, writes predict's PNG
    assert main(["export", str(best), "--format", "ce7454", "--out", str(tmp_path / "sub")]) == 0
    image = data / "val" / "images" / f"{stems[0]}.jpg"
    assert load_image(image).shape == (48, 48, 3)
    proc = run_solution(
        tmp_path / "sub" / "solution", "--input", str(image), "--output", str(tmp_path / "y.png")
    )
    assert proc.returncode == 0, proc.stderr
    # (against predict's default, one image at a time, as run.py runs)
    np.testing.assert_array_equal(load_mask(tmp_path / "y.png"), predictor(image))
