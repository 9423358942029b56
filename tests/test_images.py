"""Images domain: UNet2D contract, digits metrics on known inputs, and a tiny train -> sample -> evaluate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sciffusion.domains.images.data import load_digits_splits
from sciffusion.domains.images.metrics import accuracy, frechet_distance, gaussian_frechet, train_classifier
from sciffusion.domains.images.unet2d import UNet2D

ROOT = Path(__file__).resolve().parents[1]


def test_unet_shapes_and_null_class():
    net = UNet2D(channels=8, channel_mults=[1, 2], blocks_per_level=1, attention_levels=[1], num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    label = torch.tensor([0, 3, 7, 9])
    out = net({"image": x}, torch.rand(4), {"label": label})["image"]
    assert out.shape == x.shape
    dropped = net.drop_condition({"label": label}, torch.tensor([True, False, True, False]))["label"]
    assert dropped.tolist() == [10, 3, 10, 9]


def test_unet_class_changes_output():
    torch.manual_seed(0)
    net = UNet2D(channels=8, channel_mults=[1, 2], blocks_per_level=1, num_classes=10).eval()
    for p in net.parameters():  # zero-initialised output layers would hide the class embedding
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    a = net({"image": x}, t, {"label": torch.tensor([1, 1])})["image"]
    b = net({"image": x}, t, {"label": torch.tensor([2, 2])})["image"]
    assert not torch.allclose(a, b)


def test_gaussian_frechet_closed_form():
    # N(0, I) vs N(1, 4 I) in 2-D: |mu|^2 = 2, trace term 2 + 8 - 2 * 4 = 2
    assert gaussian_frechet(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)) == pytest.approx(4.0, abs=1e-6)
    assert gaussian_frechet(np.ones(3), np.diag([1.0, 2, 3]), np.ones(3), np.diag([1.0, 2, 3])) == pytest.approx(0.0, abs=1e-6)


def test_digits_split_and_classifier():
    train, test = load_digits_splits()
    assert len(train.labels) == 1437 and len(test.labels) == 360
    assert train.images.min() >= -1 and train.images.max() <= 1
    clf = train_classifier(train, epochs=5)
    assert accuracy(clf, test.images, test.labels) > 0.95
    assert frechet_distance(clf, test.images, test.images) == pytest.approx(0.0, abs=1e-6)
    noise = torch.rand_like(test.images) * 2 - 1
    assert frechet_distance(clf, noise, test.images) > 10 * frechet_distance(clf, train.images, test.images)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sciffusion", *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ})


def test_tiny_train_sample_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIFFUSION_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    r = _cli("train", "configs/images/digits.yaml", f"run_dir={run}", "trainer.max_steps=6", "trainer.batch_size=16",
             "net.channels=8", "trainer.checkpoint_every=3", "trainer.sample_every=6", "trainer.progress=false",
             "sample.steps=3", "trainer.log_every=2")
    assert r.returncode == 0, r.stderr
    assert (run / "checkpoints" / "last").is_dir() and (run / "samples" / "step0000006.png").is_file()
    out = tmp_path / "grid.png"
    r = _cli("sample", str(run), "--n", "20", "--steps", "2", "--solver", "ddim", "--guidance-scale", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and out.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "run"], "no pickle or temp file beside the PNG"
    r = _cli("evaluate", str(run), "--n", "20", "--steps", "2")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["class_accuracy"] <= 1.0
    assert metrics["frechet_floor_train_vs_test"] < metrics["frechet_distance_vs_test"]
