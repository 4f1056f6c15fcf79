"""Training the discriminator head: real photographs against generated images.

CLIP stays frozen: its image embeddings are computed once, then a small MLP learns
real-vs-generated on them. Validation images are held out *by source* (all crops of one
photograph land on the same side), so the reported AUC is not inflated by near-duplicates.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from workers.discriminator import Discriminator, MLPHead
from workers.errors import DiscriminatorError
from workers.images import ImageLike, open_image

MIN_PER_CLASS = 4


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise DiscriminatorError("AUC needs both real and generated images")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    uniq, inv = np.unique(s, return_inverse=True)
    ranks = (np.bincount(inv, ranks) / np.bincount(inv))[inv]
    u = ranks[y == 1].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def random_crops(image: Image.Image, n: int, rng: random.Random, min_frac: float = 0.35,
                 permute_channels: bool = False) -> list[Image.Image]:
    """``n`` random square crops (side a random share of the short side, mirrored half the
    time) of one photo: turns a handful of real photographs into enough varied real samples.

    ``permute_channels`` shuffles R, G and B per crop: with only a few real sources, it stops
    the head from learning their palette instead of what real images look like (without it,
    a held-out photograph of an unusual colour, e.g. a stained tissue slide, scores as fake).
    """
    w, h = image.size
    out = []
    for _ in range(n):
        side = max(8, int(min(w, h) * rng.uniform(min_frac, 1.0)))
        x, y = rng.randint(0, w - side), rng.randint(0, h - side)
        crop = image.crop((x, y, x + side, y + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if permute_channels:
            bands = crop.convert("RGB").split()
            order = [0, 1, 2]
            rng.shuffle(order)
            crop = Image.merge("RGB", [bands[i] for i in order])
        out.append(crop)
    return out


@dataclass
class TrainResult:
    head: MLPHead
    val_auc: float
    train_auc: float
    n_train: int
    n_val: int
    losses: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        return {"val_auc": round(self.val_auc, 4), "train_auc": round(self.train_auc, 4),
                "n_train": self.n_train, "n_val": self.n_val,
                "final_loss": round(self.losses[-1], 4) if self.losses else float("nan")}


def _split(groups: list[str], labels: list[int], val_fraction: float, rng: random.Random
           ) -> np.ndarray:
    """Boolean mask of validation samples: whole groups, per class, about ``val_fraction``."""
    is_val = np.zeros(len(groups), dtype=bool)
    for cls in (0, 1):
        names = sorted({g for g, y in zip(groups, labels, strict=True) if y == cls})
        rng.shuffle(names)
        n_val = max(1, round(len(names) * val_fraction))
        if n_val >= len(names):
            raise DiscriminatorError(
                f"too few {'real' if cls else 'generated'} sources ({len(names)}) to hold out "
                "a validation set; add images or lower --val-fraction")
        chosen = set(names[:n_val])
        for i, (g, y) in enumerate(zip(groups, labels, strict=True)):
            if y == cls and g in chosen:
                is_val[i] = True
    return is_val


def train_head(disc: Discriminator, real: Sequence[ImageLike], generated: Sequence[ImageLike],
               *, real_groups: Sequence[str] | None = None,
               generated_groups: Sequence[str] | None = None, epochs: int = 200,
               lr: float = 2e-3, hidden: int = 256, weight_decay: float = 1e-3,
               val_fraction: float = 0.25, seed: int = 0, progress: bool = True) -> TrainResult:
    """Train an MLP head on frozen CLIP embeddings (label 1 = real) and attach it to ``disc``.

    ``*_groups`` name each image's source (e.g. the photograph a crop came from); images of
    one source go to the same side of the train/validation split. By default each image is
    its own source.
    """
    from tqdm.auto import tqdm

    if not 0.0 < val_fraction < 1.0:
        raise DiscriminatorError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if epochs < 1:
        raise DiscriminatorError(f"epochs must be at least 1, got {epochs}")
    for name, items in (("real", real), ("generated", generated)):
        if len(items) < MIN_PER_CLASS:
            raise DiscriminatorError(f"need at least {MIN_PER_CLASS} {name} images, got "
                                     f"{len(items)}")
    rg = list(real_groups) if real_groups is not None else [f"r{i}" for i in range(len(real))]
    gg = (list(generated_groups) if generated_groups is not None
          else [f"g{i}" for i in range(len(generated))])
    if len(rg) != len(real) or len(gg) != len(generated):
        raise DiscriminatorError("one group name per image is needed")
    images = [open_image(x, i) for i, x in enumerate([*real, *generated])]
    labels = [1] * len(real) + [0] * len(generated)
    groups = [f"real:{g}" for g in rg] + [f"gen:{g}" for g in gg]

    rng = random.Random(seed)
    is_val = _split(groups, labels, val_fraction, rng)
    feats = disc.features(images, progress=progress)
    y = torch.tensor(labels, dtype=torch.float32)
    tr, va = torch.from_numpy(~is_val), torch.from_numpy(is_val)

    torch.manual_seed(seed)
    head = MLPHead(feats.shape[1], hidden)
    head.set_normalisation(feats[tr])
    n_pos, n_neg = float(y[tr].sum()), float((1 - y[tr]).sum())
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(n_neg / max(n_pos, 1.0)))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    x_tr, y_tr = feats[tr], y[tr]
    batch = 64
    losses: list[float] = []
    bar = tqdm(range(epochs), desc="training head", unit="epoch", disable=not progress)
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP: extra threads only add synchronisation
    try:
        for _ in bar:
            head.train()
            order = torch.randperm(len(x_tr), generator=gen)
            total = 0.0
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                opt.zero_grad()
                loss = loss_fn(head(x_tr[idx]), y_tr[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(x_tr))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    finally:
        torch.set_num_threads(threads)
    head.eval()
    with torch.no_grad():
        logits = head(feats)
    val_auc = roc_auc(y[va].tolist(), logits[va].tolist())
    train_auc = roc_auc(y[tr].tolist(), logits[tr].tolist())
    disc.set_head(head)
    return TrainResult(head, val_auc, train_auc, int(tr.sum()), int(va.sum()), losses)
