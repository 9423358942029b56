"""The images domain adapter (registered as ``images``)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sciffusion.config import Config, ConfigError
from sciffusion.domain import Domain, Run, TrainSetup
from sciffusion.domains.images.data import LabelledImages, load_digits_splits
from sciffusion.domains.images.metrics import DigitsClassifier, accuracy, frechet_distance, train_classifier
from sciffusion.domains.images.plots import save_grid
from sciffusion.model import DiffusionModel, diffusion_model_from_config
from sciffusion.domains.images.unet2d import UNet2DConfig
from sciffusion.outputs import IMAGE_SUFFIXES, OutputError, check_file, check_folder, publish_together
from sciffusion.registry import DOMAINS

NUM_CLASSES = 10
MAX_LEVELS = 4  # U-Net resolution levels an 8x8 image can take: 8, 4, 2, 1


@dataclass
class ImagesData:
    """``data:`` section of an images config."""

    dataset: Literal["digits"] = "digits"
    test_fraction: float = 0.2
    split_seed: int = 0


@torch.no_grad()
def class_conditional_samples(model: DiffusionModel, per_class: int, solver: str, steps: int, guidance_scale: float,
                              seed: int, batch_size: int = 500, eta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` samples of every digit: images ``(10 * per_class, 1, 8, 8)`` and their labels, class-major."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(labels), batch_size):
        lab = labels[i:i + batch_size].to(device)
        x = model.sample({"image": (len(lab), 1, 8, 8)}, cond={"label": lab}, solver=solver, steps=steps, eta=eta,
                         guidance_scale=guidance_scale, generator=gen, clip_x0=1.0)
        out.append(x["image"].clamp(-1, 1).cpu())
    return torch.cat(out), labels


def cache_dir() -> Path:
    """Where derived artefacts (evaluation classifiers) are cached: ``$SCIFFUSION_CACHE`` or ``~/.cache/sciffusion``."""
    return Path(os.environ.get("SCIFFUSION_CACHE", Path.home() / ".cache" / "sciffusion"))


def cached_classifier(data: ImagesData) -> DigitsClassifier:
    """The evaluation classifier, trained deterministically on the real train split once and cached
    (a damaged cache file is trained again and replaced)."""
    name = f"digits_classifier_v1_split{data.split_seed}_{int(round(data.test_fraction * 1000))}.safetensors"
    path = cache_dir() / name
    clf = DigitsClassifier()
    if path.is_file():
        try:
            clf.load_state_dict(load_file(str(path)))
            return clf.eval()
        except (SafetensorError, OSError, RuntimeError):
            pass
    train, _ = load_digits_splits(data.test_fraction, data.split_seed)
    clf = train_classifier(train)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(clf.state_dict(), str(tmp))
    tmp.replace(path)
    return clf


def check_net(cfg: Config) -> None:
    """Refuse net settings the 8x8 digits cannot take (the net's own config checks everything else)."""
    if cfg.net is None or cfg.process is None:
        raise ConfigError("an images config needs the 'net' and 'process' sections")
    if cfg.net.name != "unet2d":
        raise ConfigError(f"'net.name': the images domain trains a unet2d, got '{cfg.net.name}'")
    params: UNet2DConfig = cfg.net.params
    if params.in_channels != 1:
        raise ConfigError(f"'net.in_channels' must be 1 for the grey-scale digits, got {params.in_channels}")
    if params.field != "image":
        raise ConfigError(f"'net.field' must be 'image' for the images domain, got '{params.field}'")
    if len(params.channel_mults) > MAX_LEVELS:
        raise ConfigError(f"'net.channel_mults' has {len(params.channel_mults)} levels; the 8x8 digits allow at most "
                          f"{MAX_LEVELS} (each level halves the image: 8, 4, 2, 1)")


def sample_path(run: Run, out: str | None) -> Path:
    """The PNG ``sample`` writes: ``out`` if it ends in ``.png``, else ``out/samples.png`` (``out`` a folder)."""
    if not out:
        return run.run_dir / "samples" / "samples.png"
    path = Path(out)
    if path.suffix.lower() == ".png":
        return check_file(path, "--out", (".png",))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise OutputError(f"--out {path}: the images domain writes PNG grids; give a .png file or a folder")
    return check_folder(path, "--out") / "samples.png"


@DOMAINS.register("images", help="class-conditional images (embedded default: sklearn 8x8 digits)")
class ImagesDomain(Domain):
    name = "images"
    data_config = ImagesData

    def build_model(self, cfg: Config) -> DiffusionModel:
        check_net(cfg)
        net = cfg.net.build(num_classes=NUM_CLASSES)
        return diffusion_model_from_config(net, {"image": cfg.process.build()}, cfg.loss)

    def setup(self, cfg: Config) -> TrainSetup:
        train, _ = load_digits_splits(cfg.data.test_fraction, cfg.data.split_seed)
        model = self.build_model(cfg)
        sc = cfg.sample

        def hook(ema_model: torch.nn.Module, step: int, out_dir: Path) -> None:
            images, _ = class_conditional_samples(ema_model, 10, sc.solver, sc.steps, sc.guidance_scale, sc.seed)
            save_grid(images, out_dir / f"step{step:07d}.png", rows=NUM_CLASSES, title=f"step {step}",
                      row_labels=[str(d) for d in range(NUM_CLASSES)])

        return TrainSetup(model=model, dataset=LabelledImages(train), sample_hook=hook)

    def sample(self, run: Run, args: argparse.Namespace) -> None:
        """A PNG grid, one row per digit: ``--out`` as a ``.png`` file, or ``samples.png`` in the ``--out`` folder."""
        sc = run.sample_config(args)
        out = sample_path(run, getattr(args, "out", None))
        per_class = max(1, -(-sc.n // NUM_CLASSES))
        images, _ = class_conditional_samples(run.model, per_class, sc.solver, sc.steps, sc.guidance_scale, sc.seed,
                                              sc.batch_size, sc.eta)
        title = f"{sc.solver}, {sc.steps} steps, CFG scale {sc.guidance_scale:g}"
        with publish_together([out]) as (temp,):
            save_grid(images, temp, rows=NUM_CLASSES, title=title, row_labels=[str(d) for d in range(NUM_CLASSES)])
        print(f"wrote {out} ({len(images)} samples, {per_class} per class)")

    def evaluate(self, run: Run, args: argparse.Namespace) -> dict[str, Any]:
        sc = run.sample_config(args)
        data: ImagesData = run.config.data
        train, test = load_digits_splits(data.test_fraction, data.split_seed)
        clf = cached_classifier(data)
        per_class = max(1, -(-sc.n // NUM_CLASSES))
        images, labels = class_conditional_samples(run.model, per_class, sc.solver, sc.steps, sc.guidance_scale, sc.seed,
                                                   sc.batch_size, sc.eta)
        metrics = {
            "solver": sc.solver, "steps": sc.steps, "guidance_scale": sc.guidance_scale, "n_samples": len(images),
            "class_accuracy": accuracy(clf, images, labels),
            "frechet_distance_vs_test": frechet_distance(clf, images, test.images),
            "frechet_floor_train_vs_test": frechet_distance(clf, train.images, test.images),
            "classifier_accuracy_real_test": accuracy(clf, test.images, test.labels),
        }
        return metrics
