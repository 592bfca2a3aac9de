"""The benchmark harness: its references compute our models' function, its reports and CLI work.
No timing is asserted here (speed targets live in benchmarks/, measured side by side)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from segformer import SegformerError, create_model
from segformer.bench import bench_inference, bench_train, compare_logits, load_reference, peak_memory_mb
from segformer.bench.seed import SeedMicroSegFormer, seed_reference
from segformer.cli import main

TINY_MICRO = {"embed_dims": [8, 16, 24, 32], "depths": [1, 2, 1, 1], "decoder_dim": 16}
TINY_B0 = {"embed_dims": [8, 16, 24, 32], "num_heads": [1, 2, 3, 4], "decoder_dim": 16}


def test_seed_formulation_computes_the_model_function():
    model = create_model("microsegformer", num_classes=5, **TINY_MICRO).eval()
    seed = SeedMicroSegFormer.from_model(model)
    x = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        ours, literal = model(x), seed(x)
    assert literal.shape == ours.shape == (2, 5, 67, 45)
    assert (ours - literal).abs().max() < 1e-4
    assert torch.equal(ours.argmax(1), literal.argmax(1))


def test_seed_formulation_is_the_literal_one():
    """It upsamples the 128-channel fused map before classifying, where ours classifies first."""
    model = create_model("microsegformer", num_classes=5, **TINY_MICRO).eval()
    seed = SeedMicroSegFormer.from_model(model)
    calls = []
    seed.decoder.classifier.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    with torch.no_grad():
        seed(torch.randn(1, 3, 64, 64))
    assert calls == [torch.Size([1, 16, 64, 64])]  # the D-channel map at full resolution


def test_seed_reference_refuses_segformer_heads():
    with pytest.raises(SegformerError, match="seed formulation"):
        seed_reference(create_model("segformer-b0", num_classes=5, **TINY_B0))


def test_seed_reference_loss_is_cross_entropy_at_full_size():
    model = create_model("microsegformer", num_classes=5, **TINY_MICRO)
    ref = seed_reference(model)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    y[0, :4] = 255
    with torch.no_grad():
        expected = F.cross_entropy(model.eval()(x), y, ignore_index=255)
        assert torch.allclose(ref.loss(x, y), expected, atol=1e-5)


def test_hf_reference_holds_the_same_weights():
    pytest.importorskip("transformers")
    model = create_model("segformer-b0", num_classes=5, norm_eps=1e-5, embed_norm_eps=1e-5, **TINY_B0).eval()
    ref = load_reference("hf")(model)
    x = torch.randn(1, 3, 61, 77)
    with torch.no_grad():
        assert (ref.forward(x) - model(x)).abs().max() < 1e-4


def test_compare_logits_counts_only_real_disagreements():
    a = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    assert compare_logits(a, a.clone())["argmax"] == "identical (2 pixels)"
    b = a.clone()
    b[0, 1, 0, 0] = 2.0  # a real disagreement at pixel 0
    expected = "1 of 2 pixels differ, 1 beyond float rounding (top-2 gap <= 1.0e+00)"
    assert compare_logits(b, a)["argmax"] == expected
    near = torch.tensor([[[[1.0, 0.0]], [[1.0 - 1e-7, 1.0]]]])  # pixel 0 is a tie up to 1e-7
    flipped = near.clone()
    flipped[0, 1, 0, 0] = 1.0 + 1e-7
    assert compare_logits(flipped, near)["argmax"].startswith("1 of 2 pixels differ, all ties")


def test_bench_inference_against_the_seed_reports_both_sides():
    report = bench_inference("microsegformer", 48, 2, "seed", num_classes=5, overrides=TINY_MICRO, warmup=0,
                             rounds=2, memory=False)  # fmt: skip
    assert [r.side for r in report.rows] == ["ours (torch)", "seed formulation"]
    assert all(r.seconds > 0 and r.batch == 2 and r.flops > 0 for r in report.rows)
    assert report.checks["argmax"].startswith("identical")
    assert float(report.checks["max_abs_logit_diff"]) < 1e-4
    ratio = report.ratio()
    assert ratio["speedup"] == pytest.approx(report.rows[0].images_per_s / report.rows[1].images_per_s)
    text = report.format()
    assert "ours / seed formulation" in text and "FLOP util" in text


def test_bench_train_steps_both_sides_and_measures_memory_in_subprocesses():
    report = bench_train(
        "microsegformer", 32, 2, "seed", num_classes=5, overrides=TINY_MICRO, warmup=0, rounds=1
    )
    assert len(report.rows) == 2
    assert all(r.peak_mb is not None and r.peak_mb >= 0 for r in report.rows)
    assert "memory_ratio" in report.ratio()


def test_peak_memory_grows_with_the_input():
    spec = {"name": "microsegformer", "num_classes": 5, "compare": "seed", "overrides": TINY_MICRO}
    small = peak_memory_mb(spec, "ours", (32, 32), 1, "infer", 1, True)
    large = peak_memory_mb(spec, "ours", (512, 512), 4, "infer", 1, True)
    assert large > small + 5  # 4 x 512^2 inputs alone are 12 MB


def test_unknown_reference_is_a_clear_error():
    with pytest.raises(SegformerError, match="unknown comparison"):
        load_reference("nope")


def test_cli_bench_json(capsys):
    args = (
        "bench microsegformer --size 40 56 --compare seed --rounds 1 --warmup 0 --no-memory --num-classes 3"
    )
    code = main([*args.split(), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["title"].startswith("inference: microsegformer (3 classes) at 40x56")
    assert len(out["rows"]) == 2 and out["speedup"] > 0


def test_cli_bench_rejects_three_sizes(capsys):
    assert main(["bench", "microsegformer", "--size", "1", "2", "3"]) == 1
    assert "--size takes S or H W" in capsys.readouterr().err


def test_end_to_end_bench_feeds_the_training_step_from_the_run_pipeline(tmp_path, capsys):
    from segformer.bench import bench_train_end_to_end
    from segformer.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, num=20, size=40, seed=0, val_fraction=0.2)
    tiny = {"model.depths": [1, 1, 1, 1]}
    report = bench_train_end_to_end("microsegformer", tmp_path, 32, 4, augment="both", workers=0, threads=1,
                                    steps=2, warmup=0, rounds=1, overrides=tiny)  # fmt: skip
    assert [r.side for r in report.rows] == ["end to end", "bare step"]
    assert all(r.seconds > 0 and r.batch == 4 for r in report.rows)
    e2e, bare = report.rows
    assert report.ratio()["speedup"] == pytest.approx(e2e.images_per_s / bare.images_per_s)
    assert "end to end / bare step" in report.format() and "both augmentation" in report.title
    args = f"bench microsegformer --mode train --end-to-end --data {tmp_path} --size 32 --batch-size 4"
    args += " --workers 0 --steps 1 --rounds 1 --threads 1 --json"
    assert main(args.split()) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["side"] for r in out["rows"]] == ["end to end", "bare step"] and out["speedup"] > 0
    assert main(["bench", "microsegformer", "--end-to-end", "--data", str(tmp_path)]) == 1
    assert "--end-to-end needs --mode train" in capsys.readouterr().err
