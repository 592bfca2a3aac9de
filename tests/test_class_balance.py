"""Rare classes: repeat-factor sampling (`data.repeat_factor`) and class-weighted cross entropy
(`train.class_weight`) against hand-computed values and naive references; the sampler across a resume
and across processes; the switches validated and trained end to end."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segformer import InferenceSettings, SegformerError, create_model
from segformer.cli import main
from segformer.config import DataConfig, load_recipe, parse_overrides
from segformer.data.balance import (
    class_pixels,
    class_repeat_factors,
    class_weights,
    epoch_indices,
    epoch_length,
    repeat_factors,
)
from segformer.data.synthetic import write_synthetic_dataset
from segformer.engine.data import EpochSampler, RepeatFactorSampler, build_train_data
from segformer.engine.losses import SegmentationLoss, boundary_pixels

from conftest import tiny_config

TINY_MODEL = {
    "embed_dims": [8, 8, 16, 16],
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 1, 1],
    "decoder_dim": 16,
}


def hand_masks() -> list[np.ndarray]:
    """Five 4x4 masks over 4 classes (class 3 never appears; 255 = ignore)."""
    m = [np.zeros((4, 4), np.uint8) for _ in range(5)]
    m[1][0, :] = 1  # 12 x class 0, 4 x class 1
    m[2][0, :] = 1  # 11 x class 0, 4 x class 1, 1 x class 2
    m[2][3, 3] = 2
    m[3][2:, :] = 255  # 8 x class 0, 8 ignored
    m[4][:] = 255  # nothing but ignored pixels
    return m


# -- the statistics ---------------------------------------------------------------------------------


def test_class_pixels_and_repeat_factors_of_hand_built_masks():
    pixels = class_pixels(hand_masks(), num_classes=4)
    expected = [[16, 0, 0, 0], [12, 4, 0, 0], [11, 4, 1, 0], [8, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(pixels, expected)
    # image fractions: class 0 in 4/5, class 1 in 2/5, class 2 in 1/5, class 3 in none
    # t = 0.8: r(0) = max(1, sqrt(0.8 / 0.8)) = 1, r(1) = sqrt(0.8 / 0.4) = sqrt(2), r(2) = sqrt(4) = 2
    np.testing.assert_allclose(class_repeat_factors(pixels, 0.8), [1.0, math.sqrt(2), 2.0, 1.0])
    np.testing.assert_allclose(repeat_factors(pixels, 0.8), [1.0, math.sqrt(2), 2.0, 1.0, 1.0])
    # t = 0.05: every class is above the threshold, nothing repeats
    np.testing.assert_array_equal(repeat_factors(pixels, 0.05), np.ones(5))
    # t = 1: r(0) = sqrt(1 / 0.8), and image 3 (class 0 only) takes it
    np.testing.assert_allclose(
        repeat_factors(pixels, 1.0), [math.sqrt(1.25), math.sqrt(2.5), math.sqrt(5), 1.25**0.5, 1]
    )
    assert epoch_length(repeat_factors(pixels, 0.8)) == 6  # 1 + 1 + 2 + 1 + 1, plus floor(0.414)
    assert class_pixels([None], 3).tolist() == [[0, 0, 0]]


def test_class_weights_of_hand_built_masks():
    pixels = class_pixels(hand_masks(), num_classes=4)
    # class totals n = (47, 8, 1, 0) of T = 56 pixels; w(c) = (1 / sqrt(n_c / T)) / sum_c' sqrt(n_c' / T)
    # = T / (sqrt(n_c) * S) with S = sqrt(47) + sqrt(8) + sqrt(1); class 3 is never seen: 1
    s = math.sqrt(47) + math.sqrt(8) + 1
    expected = [56 / (math.sqrt(47) * s), 56 / (math.sqrt(8) * s), 56 / s, 1.0]
    weights = class_weights(pixels)
    np.testing.assert_allclose(weights, expected)
    assert (47 * weights[0] + 8 * weights[1] + 1 * weights[2]) / 56 == pytest.approx(1.0)  # pixel mean 1
    np.testing.assert_allclose(class_weights(pixels, max_weight=3.0), [*expected[:2], 3.0, 1.0])
    # a class in 1 pixel of a million is clipped at 10
    # unclipped: w(c) = 1 / (sqrt(p(c)) * S), S = sqrt(1 - 1e-6) + sqrt(1e-6); w(1) = 999 -> 10
    clipped = class_weights(np.array([[10**6 - 1, 1]]))
    np.testing.assert_allclose(clipped, [1 / (math.sqrt(1 - 1e-6) * (math.sqrt(1 - 1e-6) + 1e-3)), 10.0])


# -- the sampler ------------------------------------------------------------------------------------


def test_whole_repeat_factors_repeat_exactly():
    factors = np.array([1.0, 2.0, 3.0, 1.0])
    for epoch in range(5):
        counts = np.bincount(epoch_indices(factors, seed=0, epoch=epoch), minlength=4)
        np.testing.assert_array_equal(counts, [1, 2, 3, 1])


def test_sampler_counts_match_the_repeat_factors_on_average():
    rng = np.random.default_rng(0)
    n, epochs = 256, 4000
    factors = np.where(rng.random(n) < 0.5, 1.0, rng.uniform(1.0, 3.5, n))
    length = epoch_length(factors)
    assert length == int(np.floor(factors).sum() + np.floor((factors - np.floor(factors)).sum()))
    totals = np.zeros(n)
    for epoch in range(epochs):
        indices = epoch_indices(factors, seed=7, epoch=epoch)
        assert len(indices) == length  # every epoch equally long
        counts = np.bincount(indices, minlength=n)
        # floor(r) or floor(r) + 1 copies; at most one copy in the whole epoch was dropped to fit the length
        low = np.floor(factors).astype(int)
        assert (counts <= low + 1).all() and ((counts < low).sum() <= 1) and (counts >= low - 1).all()
        totals += counts
    mean = totals / epochs
    frac = factors - np.floor(factors)
    # binomial spread of the mean, plus the dropped copy (at most r(i) / length per image on average)
    tolerance = 5 * np.sqrt(frac * (1 - frac) / epochs) + factors / length + 1e-9
    assert (np.abs(mean - factors) <= tolerance).all(), np.abs(mean - factors).max()


def test_sampler_epochs_are_seeded_and_differ():
    factors = np.array([1.0, 1.5, 2.25, 1.0, 3.7, 1.1])
    a = epoch_indices(factors, seed=3, epoch=2)
    np.testing.assert_array_equal(a, epoch_indices(factors, seed=3, epoch=2))
    assert not np.array_equal(a, epoch_indices(factors, seed=3, epoch=3))
    assert not np.array_equal(a, epoch_indices(factors, seed=4, epoch=2))
    with pytest.raises(ValueError, match=">= 1"):
        epoch_indices(np.array([1.0, 0.5]), 0, 0)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_equal_disjoint_shares_of_the_same_epoch(world):
    rng = np.random.default_rng(1)
    factors = rng.uniform(1.0, 2.6, 21)
    full = epoch_indices(factors, seed=5, epoch=4)
    ranks = [RepeatFactorSampler(factors, world, r, seed=5) for r in range(world)]
    for s in ranks:
        s.set_epoch(4)
    shares = [list(s) for s in ranks]
    assert {len(s) for s in shares} == {len(full) // world} == {len(s) for s in ranks}
    # the union, interleaved back, is the single-process epoch without its indivisible tail
    union = [shares[i % world][i // world] for i in range(world * len(shares[0]))]
    assert union == full[: len(union)].tolist()


def test_resuming_inside_an_epoch_continues_the_same_sequence():
    factors = np.array([1.0, 1.5, 2.25, 1.0, 3.7, 1.1, 1.9])
    sampler = EpochSampler(RepeatFactorSampler(factors, 1, 0, seed=2))
    sampler.set_epoch(6)
    n = len(sampler)
    whole = list(itertools.islice(sampler, n))
    assert [e for e, _ in whole] == [6] * n
    resumed = EpochSampler(RepeatFactorSampler(factors, 1, 0, seed=2))  # a new process
    resumed.set_epoch(6, skip=5)
    assert list(itertools.islice(resumed, n - 5)) == whole[5:] and len(resumed) == n - 5


def test_one_iteration_runs_through_the_epochs_each_cut_to_whole_batches():
    factors = np.array([1.0, 1.5, 2.25, 1.0, 3.7, 1.1, 1.9])
    base = RepeatFactorSampler(factors, 1, 0, seed=3)
    per_epoch = len(base)
    sampler = EpochSampler(base, take=per_epoch - 3)
    sampler.set_epoch(2, skip=4)
    stream = list(itertools.islice(sampler, (per_epoch - 3 - 4) + 2 * (per_epoch - 3)))
    expected = []
    for epoch, skip in ((2, 4), (3, 0), (4, 0)):
        indices = epoch_indices(factors, seed=3, epoch=epoch)[: per_epoch - 3]  # each epoch's own draw
        expected += [(epoch, int(i)) for i in indices[skip:]]
    assert stream == expected
    assert len(sampler) == per_epoch - 3 - 4  # what is left of the first epoch


def test_the_run_loader_streams_whole_steps_across_epochs():
    from segformer.engine.data import train_loader

    class Numbers(torch.utils.data.Dataset):  # item i of an epoch is (epoch, i)
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return self.epoch, i

    data = Numbers()
    gen = torch.Generator().manual_seed(0)
    loader, sampler = train_loader(data, 3, 0, torch.device("cpu"), 0, gen, collate=list, accum=2)
    sampler.set_epoch(5)
    batches = iter(loader)
    got = [next(batches) for _ in range(3)]  # one step of 2 x 3 images per epoch (10 // 6 = 1)
    epochs = [{e for e, _ in b} for b in got]
    assert epochs == [{5}, {5}, {6}]  # the 4 images past the last whole step of epoch 5 are skipped
    assert all(len(b) == 3 for b in got)


# -- the weighted cross entropy ---------------------------------------------------------------------


def naive_weighted_ce(logits, target, weight, smoothing=0.0, pixel_weight=None):
    """sum_i w_i CE_i / sum_i w_i over valid pixels, one pixel at a time; CE_i with label smoothing is
    (1 - e) (-log p_y) + e * mean_c (-log p_c)."""
    logp = F.log_softmax(logits.double(), 1)
    k = logits.shape[1]
    num = den = 0.0
    for b, y, x in np.ndindex(*target.shape):
        t = int(target[b, y, x])
        if t == 255:
            continue
        ce = -(1 - smoothing) * float(logp[b, t, y, x]) - smoothing * float(logp[b, :, y, x].sum()) / k
        w = float(weight[t]) * (1.0 if pixel_weight is None else float(pixel_weight[b, y, x]))
        num, den = num + w * ce, den + w
    return torch.tensor(num / den, dtype=torch.float32)


@pytest.fixture
def labelled():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    target = torch.randint(0, 4, (2, 3, 7), generator=g).repeat_interleave(2, 1)  # class 4 absent
    target[0, :2, :3] = 255
    weight = torch.tensor([0.5, 2.0, 1.0, 7.5, 3.0])
    return logits, target, weight


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_ce_matches_a_per_pixel_reference(labelled, smoothing):
    logits, target, weight = labelled
    expected = naive_weighted_ce(logits, target, weight, smoothing)
    ce = SegmentationLoss("ce", label_smoothing=smoothing, class_weight=weight)
    torch.testing.assert_close(ce(logits, target), expected)
    dice = SegmentationLoss("dice")(logits, target)
    combined = SegmentationLoss("ce+dice", 0.5, label_smoothing=smoothing, class_weight=weight)
    torch.testing.assert_close(combined(logits, target), expected + 0.5 * dice)
    edges = boundary_pixels(target, 1)
    assert 0 < edges.sum() < (target != 255).sum()
    boundary = SegmentationLoss(
        "ce+dice+boundary", 0.5, label_smoothing=smoothing, boundary_weight=4.0, boundary_width=1,
        class_weight=weight,
    )  # fmt: skip
    with_edges = naive_weighted_ce(logits, target, weight, smoothing, torch.where(edges, 4.0, 1.0))
    torch.testing.assert_close(boundary(logits, target), with_edges + 0.5 * dice)
    # unit weights are the unweighted losses; without smoothing the weights are F.cross_entropy's
    ones = torch.ones(5)
    for name in ("ce", "ce+dice", "ce+dice+boundary"):
        plain = SegmentationLoss(name, label_smoothing=smoothing)(logits, target)
        torch.testing.assert_close(
            SegmentationLoss(name, label_smoothing=smoothing, class_weight=ones)(logits, target), plain
        )
    if smoothing == 0:
        torch.testing.assert_close(
            ce(logits, target), F.cross_entropy(logits, target, weight, ignore_index=255)
        )
    assert not torch.isclose(
        ce(logits, target), SegmentationLoss("ce", label_smoothing=smoothing)(logits, target)
    )


def test_weighted_ce_ignores_ignored_pixels_and_refuses_bad_weights(labelled):
    logits, target, weight = labelled
    logits.requires_grad_(True)
    loss = SegmentationLoss("ce+dice", class_weight=weight)(logits, target)
    loss.backward()
    assert logits.grad[0, :, :2, :3].abs().max() == 0
    all_ignored = SegmentationLoss("ce", class_weight=weight)(logits, torch.full_like(target, 255))
    assert float(all_ignored.detach()) == 0.0
    with pytest.raises(SegformerError, match="4 class weights for 5 classes"):
        SegmentationLoss("ce", class_weight=weight[:4])(logits, target)
    for bad in ([1.0, -1.0], [1.0, float("nan")], [[1.0]]):
        with pytest.raises(SegformerError, match="positive finite"):
            SegmentationLoss("ce", class_weight=bad)
    with pytest.raises(SegformerError, match="cross entropy"):
        SegmentationLoss("dice", class_weight=weight)


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.repeat_factor=-0.1", r"^data\.repeat_factor: must lie in \[0, 1\], got -0\.1$"),
        ("data.repeat_factor=nan", r"^data\.repeat_factor: must be a finite number, got nan$"),
        ("data.repeat_factor=1.5", r"^data\.repeat_factor: must lie in \[0, 1\], got 1\.5$"),
        ("data.repeat_factor=rare", r"^data\.repeat_factor: expected float, got 'rare'$"),
        (
            "train.class_weight=inverse",
            r"^train\.class_weight: unknown value 'inverse'; choose from none, sqrt_inv_freq$",
        ),
        ("train.class_weight=1", r"^train\.class_weight: expected str, got 1$"),
    ],
)
def test_bad_values_are_refused(override, message):
    with pytest.raises(SegformerError, match=message):
        load_recipe("microsegformer-celebamask").override(parse_overrides([override]))


@pytest.mark.parametrize("loss", ["dice", "focal"])
def test_class_weights_need_a_cross_entropy(loss):
    base = load_recipe("microsegformer-celebamask")
    with pytest.raises(SegformerError, match=rf"^train\.class_weight: .*train\.loss={loss}"):
        base.override({"train.class_weight": "sqrt_inv_freq", "train.loss": loss})
    for ok in ("ce", "ce+dice", "ce+dice+boundary"):
        cfg = base.override(
            {"train.class_weight": "sqrt_inv_freq", "train.loss": ok, "data.repeat_factor": 0.3}
        )
        assert cfg.train.class_weight == "sqrt_inv_freq" and cfg.data.repeat_factor == 0.3
    default = load_recipe("microsegformer-seed")
    assert default.data.repeat_factor == 0.0 and default.train.class_weight == "none"


# -- from the training masks, through a run ----------------------------------------------------------


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("faces"), num=16, size=32, seed=0, val_fraction=0.25
    )


@pytest.mark.parametrize("cache", [True, False])
def test_class_pixels_come_from_the_training_masks(faces, tmp_path, cache):
    dc = DataConfig(root=str(faces), img_size=32, cache=cache, workers=0)
    data = build_train_data(dc, seed=0, out=tmp_path, progress=False)
    base = data.train.base if cache else data.train
    masks = [base.load(i)[1] for i in range(len(base))]
    expected = np.stack([[(m == c).sum() for c in range(19)] for m in masks])
    np.testing.assert_array_equal(data.class_pixels, expected)
    assert len(data.class_pixels) == 12  # the training split only


def test_cli_train_with_both_switches_then_resume_keeps_the_stored_weights(faces, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    sets += ["data.repeat_factor=0.5", "train.class_weight=sqrt_inv_freq", "data.augment=none"]
    sets = [x for s in sets for x in ("--set", s)]
    common = ["--data", str(faces), "--img-size", "32", "--batch-size", "4", "--workers", "0", *sets]
    assert main(["train", *common, "--epochs", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out

    data = build_train_data(DataConfig(root=str(faces), img_size=32, workers=0), 0, tmp_path / "d", False)
    factors = repeat_factors(data.class_pixels, 0.5)
    length = epoch_length(factors)
    assert length > 12  # the synthetic faces have rare classes to repeat
    assert f"data.repeat_factor=0.5: 12 -> {length} images per epoch; repeat factors of the rarest" in out
    assert "train.class_weight: " in out and f"{length // 4} steps/epoch" in out
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == length // 4 and math.isfinite(record["train_loss"])

    state = torch.load(run / "state.pt", weights_only=True)
    expected = torch.tensor(class_weights(data.class_pixels), dtype=torch.float32)
    torch.testing.assert_close(state["class_weight"], expected)
    # a resumed run goes on with the weights it started with, not with weights recomputed from the data
    state["class_weight"] = torch.linspace(0.5, 5.0, 19)
    torch.save(state, run / "state.pt")
    assert main(["train", *common, "--epochs", "2", "--out", str(run), "--resume", "--quiet"]) == 0
    resumed = torch.load(run / "state.pt", weights_only=True)
    assert resumed["counters"]["epoch"] == 2 and resumed["counters"]["global_step"] == 2 * (length // 4)
    torch.testing.assert_close(resumed["class_weight"], torch.linspace(0.5, 5.0, 19))


def test_logit_adjust_shifts_the_saved_classifier_and_leaves_training_alone(faces, tmp_path, capsys):
    from safetensors.torch import load_file

    from segformer.checkpoint import load
    from segformer.engine.evaluate import evaluate_model

    sets = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    sets += ["train.class_weight=sqrt_inv_freq", "data.augment=none", "train.deterministic=true"]
    common = [
        "--data",
        str(faces),
        "--img-size",
        "32",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--epochs",
        "2",
    ]
    runs = {}
    for strength in (0.0, 0.5):
        runs[strength] = run = tmp_path / f"run{strength}"
        more = [x for s in [*sets, f"train.logit_adjust={strength}"] for x in ("--set", s)]
        assert main(["train", *common, *more, "--out", str(run), "--quiet"]) == 0
    plain, shifted = (torch.load(runs[s] / "state.pt", weights_only=True) for s in (0.0, 0.5))
    for key, value in plain["model"].items():  # the weights trained on are the same
        torch.testing.assert_close(shifted["model"][key], value, rtol=0, atol=0)
    saved = load_file(runs[0.5] / "last" / "model.safetensors")
    expected = plain["model"]["decoder.classifier.bias"] - 0.5 * torch.log(shifted["class_weight"])
    torch.testing.assert_close(saved["decoder.classifier.bias"], expected)
    assert json.loads((runs[0.5] / "last" / "config.json").read_text())["meta"]["logit_adjust"] == 0.5
    # what the run logged is what `segformer eval` scores for the saved model
    logged = json.loads((runs[0.5] / "metrics.jsonl").read_text().splitlines()[-1])["val"]["ce7454_f"]
    scored = evaluate_model(load(runs[0.5] / "last"), faces, progress=False)["ce7454_f"]
    assert scored == pytest.approx(logged)
    # a run trained without the switch gets the same model from `segformer export --logit-adjust`
    out = tmp_path / "adjusted.safetensors"
    export = ["export", "--format", "pretrained", "--out", str(out), "--logit-adjust", "0.5"]
    assert main([*export, str(runs[0.0] / "last")]) == 0
    adjusted = load(out)
    torch.testing.assert_close(adjusted.decoder.classifier.bias.detach(), saved["decoder.classifier.bias"])
    assert adjusted.meta["logit_adjust"] == 0.5 and "--logit-adjust 0.5" in out.with_suffix(".md").read_text()
    assert main([*export, str(runs[0.5] / "last")]) == 1  # already adjusted
    assert "its logits are already adjusted (logit_adjust 0.5)" in capsys.readouterr().err


def test_logit_adjust_without_class_weights_changes_nothing():
    from segformer.engine.learner import logit_adjusted

    model = create_model(tiny_config("micro", num_classes=19))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with logit_adjusted(model, None, 0.5):
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])
    weight = torch.linspace(0.5, 4.0, 19)
    with logit_adjusted(model, weight, 0.5):
        shifted = model.decoder.classifier.bias.detach().clone()
    torch.testing.assert_close(shifted, before["decoder.classifier.bias"] - 0.5 * torch.log(weight))
    assert torch.equal(model.decoder.classifier.bias, before["decoder.classifier.bias"])  # restored exactly
    cfg = load_recipe("microsegformer-celebamask").override({"train.class_weight": "none"})
    assert cfg.train.logit_adjust == 0.5  # (a no-op there, not an error: ablations turn weights off)


def test_train_tta_is_what_the_saved_models_predict_with(faces, tmp_path):
    from segformer.checkpoint import load
    from segformer.engine.evaluate import evaluate_model

    sets = [f"model.{k}={json.dumps(v)}" for k, v in TINY_MODEL.items()]
    sets += ["data.augment=none", "train.tta=flip"]
    args = ["--data", str(faces), "--img-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1"]
    run = tmp_path / "run"
    assert main(["train", *args, *[x for s in sets for x in ("--set", s)], "--out", str(run), "--quiet"]) == 0
    model = load(run / "best")
    assert InferenceSettings.from_meta(model.meta).tta == "flip"
    assert json.loads((run / "best" / "config.json").read_text())["meta"]["tta"] == "flip"
    # the run's validation did not use it: it logged the score without TTA
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val"]["ce7454_f"]
    assert logged == pytest.approx(evaluate_model(model, faces, progress=False, tta="none")["ce7454_f"])
    torch.manual_seed(0)  # weights whose masks are far from mirror-symmetric, so TTA changes the score
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    default, flip, plain = (
        evaluate_model(model, faces, progress=False, **kw)["ce7454_f"]
        for kw in ({}, {"tta": "flip"}, {"tta": "none"})
    )
    assert default == flip  # eval scores a model with its own TTA unless told otherwise
    assert plain != flip  # (so the check above can tell the two apart)
