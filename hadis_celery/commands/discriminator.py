"""``hadis discriminator``: train the quality discriminator's head and score images with it.

train   fit the MLP head on frozen CLIP embeddings: real photographs vs generated images
score   quality (P(real)) and CLIP score of images, one JSON object per line

Heavy libraries (torch, transformers) load only when a sub-command runs.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _clip_options(f):
    f = click.option("--device", default="auto", show_default=True,
                     help="auto, cpu, cuda or cuda:N.")(f)
    f = click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
                     help="Images per CLIP batch.")(f)
    return f


@click.group("discriminator")
def command() -> None:
    """Train and run the CLIP + MLP quality discriminator."""


@command.command("train")
@click.option("--real", "real_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of real photographs (label 1).")
@click.option("--generated", "gen_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of generated images (label 0).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to save the trained head (.pt).")
@click.option("--clip", "clip_path", type=click.Path(path_type=Path), default=None,
              help="Local CLIPModel folder (e.g. clip-vit-base-patch32).")
@click.option("--tiny-clip", is_flag=True, help="Use a tiny random CLIP built in code (tests).")
@click.option("--crops", type=click.IntRange(1), default=1, show_default=True,
              help="Random square crops per real image (1: the whole image).")
@click.option("--permute-channels", is_flag=True,
              help="Shuffle RGB channels of real crops (for a handful of real photographs).")
@click.option("--epochs", type=click.IntRange(1), default=200, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3,
              show_default=True)
@click.option("--hidden", type=click.IntRange(2), default=256, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.25, show_default=True, help="Share of sources held out for validation.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="At most this many images per folder.")
@click.option("--seed", type=int, default=0, show_default=True)
@_clip_options
def train(real_dir: Path, gen_dir: Path, out: Path, clip_path: Path | None, tiny_clip: bool,
          crops: int, permute_channels: bool, epochs: int, lr: float, hidden: int,
          val_fraction: float, limit: int | None, seed: int, device: str, batch_size: int) -> None:
    """Train the head as a real-vs-generated classifier and report the validation AUC."""
    from workers.errors import WorkerError

    if (clip_path is None) == (not tiny_clip):
        raise click.UsageError("give exactly one of --clip PATH or --tiny-clip")
    try:
        from workers.discriminator import Discriminator
        from workers.images import list_images, open_image
        from workers.training import random_crops, train_head

        real_files = list_images(real_dir, limit)
        gen_files = list_images(gen_dir, limit)
        real, groups = [], []
        rng = random.Random(seed)
        for i, f in enumerate(real_files):
            img = open_image(f, i)
            views = (random_crops(img, crops, rng, permute_channels=permute_channels)
                     if crops > 1 else [img])
            for crop in views:
                real.append(crop)
                groups.append(f.name)
        disc = (Discriminator.tiny(seed=0, device=device, batch_size=batch_size) if tiny_clip
                else Discriminator.from_pretrained(clip_path, device=device,
                                                   batch_size=batch_size))
        click.echo(f"training on {len(real)} real ({len(real_files)} files) and "
                   f"{len(gen_files)} generated images", err=True)
        result = train_head(disc, real, gen_files, real_groups=groups, epochs=epochs, lr=lr,
                            hidden=hidden, val_fraction=val_fraction, seed=seed)
        disc.save_head(out, val_auc=result.val_auc, train_auc=result.train_auc,
                       n_train=result.n_train, n_val=result.n_val, epochs=epochs,
                       real=str(real_dir), generated=str(gen_dir))
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"validation AUC {result.val_auc:.4f} on {result.n_val} held-out images "
               f"(train AUC {result.train_auc:.4f}, {result.n_train} images); head saved to {out}")


@command.command("score")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--head", "head_path", required=True, type=click.Path(path_type=Path),
              help="Head file written by `hadis discriminator train`.")
@click.option("--clip", "clip_path", type=click.Path(path_type=Path), default=None,
              help="CLIP folder (default: the one the head was trained on).")
@click.option("--prompt", default=None, help="One prompt for every image (CLIP score).")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="A file with one prompt per image, in order.")
@click.option("--size", type=click.IntRange(8), default=None,
              help="Refuse images that are not SIZE x SIZE pixels.")
@_clip_options
def score(images: tuple[Path, ...], head_path: Path, clip_path: Path | None, prompt: str | None,
          prompts_file: Path | None, size: int | None, device: str, batch_size: int) -> None:
    """Print quality (P(real)) and CLIP score per image, as JSON lines."""
    from planner.reference import read_prompts
    from workers.errors import WorkerError

    if prompt is not None and prompts_file is not None:
        raise click.UsageError("give --prompt or --prompts, not both")
    try:
        from workers.discriminator import Discriminator
        from workers.images import expand_inputs

        files = expand_inputs(images)
        if prompts_file is not None:
            if not prompts_file.is_file():
                raise click.ClickException(f"{prompts_file}: no such prompt file")
            # One prompt a line, lines split at "\n" only: a lone carriage return inside a
            # prompt must not split it and pair every later image with the wrong prompt.
            prompts = read_prompts(prompts_file)
            if len(prompts) != len(files):
                raise click.ClickException(f"{prompts_file}: {len(prompts)} prompts (lines) "
                                           f"for {len(files)} images")
        else:
            prompts = [prompt or ""] * len(files)
        disc = Discriminator.load(head_path, clip_path, device=device, batch_size=batch_size,
                                  expected_size=size)
        scores = disc.score(files, prompts)
    except WorkerError as exc:
        raise click.ClickException(str(exc)) from exc
    for f, s in zip(files, scores, strict=True):
        click.echo(json.dumps({"image": str(f), "quality": round(s.quality, 6),
                               "clip": round(s.clip, 6)}))
