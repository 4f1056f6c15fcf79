"""``hadis router``: fit, score, tune and inspect the prompt hardness router."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence

import click
import numpy as np

from hadis_celery.reference import ReferenceDataError, read_model_scores, read_prompts
from hadis_celery.router.features import FEATURE_NAMES, FeatureExtractor
from hadis_celery.router.profile import (
    REFERENCE_WEIGHTS,
    RouterProfile,
    RouterProfileError,
    fit_profile,
    tie_break,
)
from hadis_celery.router.prompt import validate_prompt
from hadis_celery.router.tuning import (
    DEFAULT_RATIOS,
    all_pairs,
    prompt_gains,
    tune_and_evaluate,
)
from hadis_celery.settings import settings

_ERRORS = (ReferenceDataError, RouterProfileError, FileNotFoundError, ValueError, RuntimeError)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _extractor(lexicon: str | None) -> FeatureExtractor:
    path = lexicon or settings().concreteness
    if path is None:
        click.echo("note: no concreteness lexicon; abstractness uses the built-in fallback",
                   err=True)
    return FeatureExtractor(path)


def _valid_prompts(path: str) -> tuple[list[int], list[str], list[tuple[int, str]]]:
    """(indices, texts) of the valid lines, and (index, error) for the others."""
    idx, texts, bad = [], [], []
    for i, line in enumerate(read_prompts(path)):
        try:
            texts.append(validate_prompt(line))
            idx.append(i)
        except ValueError as exc:
            bad.append((i, str(exc)))
    return idx, texts, bad


def features_with_progress(
    extractor: FeatureExtractor, texts: Sequence[str], desc: str = "features", chunk: int = 512
) -> np.ndarray:
    from tqdm import tqdm

    out = np.zeros((len(texts), len(FEATURE_NAMES)))
    with tqdm(total=len(texts), desc=desc, unit="prompt", file=sys.stderr,
              disable=len(texts) < chunk) as bar:
        for i in range(0, len(texts), chunk):
            out[i : i + chunk] = extractor.extract_many(texts[i : i + chunk])
            bar.update(min(chunk, len(texts) - i))
    return out


def _parse_weights(text: str) -> tuple[float, ...]:
    parts = text.replace(",", " ").split()
    try:
        w = tuple(float(p) for p in parts)
    except ValueError as exc:
        raise click.BadParameter(f"weights must be numbers: {text!r}") from exc
    if len(w) != len(FEATURE_NAMES) or not all(math.isfinite(x) for x in w):
        raise click.BadParameter(f"need {len(FEATURE_NAMES)} finite weights, got {text!r}")
    return w


def _parse_pairs(text: str | None, models: Sequence[int]) -> list[tuple[int, int]]:
    if not text:
        return all_pairs(models)
    pairs = []
    for item in text.split(","):
        try:
            light, heavy = (int(x) for x in item.split(":"))
        except ValueError as exc:
            raise click.BadParameter(f"pairs look like 0:3,1:3; got {item!r}") from exc
        pairs.append((light, heavy))
    return pairs


@click.group("router")
def command() -> None:
    """Prompt hardness router: features, fitted profile, weight tuning."""


@command.command("fit")
@click.option("--prompts", "prompts_path", required=True, type=click.Path(dir_okay=False),
              help="Prompt file, one prompt per line.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the router profile (JSON).")
@click.option("--weights", default=None, help="8 weights (default: the reference weights).")
@click.option("--weights-from", type=click.Path(dir_okay=False), default=None,
              help="Take the weights of an existing router profile.")
@click.option("--lexicon", type=click.Path(dir_okay=False), default=None,
              help="Concreteness lexicon CSV (default: $HADIS_CONCRETENESS or the reference).")
def fit_cmd(prompts_path: str, out: str, weights: str | None, weights_from: str | None,
            lexicon: str | None) -> None:
    """Fit the normalisation and score quantiles of a router profile on a prompt set."""
    try:
        w = REFERENCE_WEIGHTS
        if weights and weights_from:
            raise click.UsageError("give --weights or --weights-from, not both")
        if weights:
            w = _parse_weights(weights)
        elif weights_from:
            w = RouterProfile.load(weights_from).weights
        _, texts, bad = _valid_prompts(prompts_path)
        extractor = _extractor(lexicon)
        feats = features_with_progress(extractor, texts, "fit")
        profile = fit_profile(feats, texts, w, lexicon=extractor.lexicon_source,
                              source=str(prompts_path))
    except _ERRORS as exc:
        raise _fail(exc) from exc
    profile.save(out)
    click.echo(f"router profile fitted on {len(texts)} prompts ({len(bad)} invalid lines "
               f"skipped) -> {out}")
    _print_thresholds(profile)


def _print_thresholds(profile: RouterProfile) -> None:
    click.echo("router ratio -> θ: " + ", ".join(
        f"{r:.1f}: {profile.threshold_for(r):+.3f}" for r in (0.1, 0.2, 0.3, 0.4, 0.5)))


@command.command("score")
@click.option("--prompts", "prompts_path", required=True, type=click.Path(dir_okay=False))
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="Router profile (default: $HADIS_ROUTER_PROFILE or the shipped sd35 one).")
@click.option("--lexicon", type=click.Path(dir_okay=False), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N lines only.")
def score_cmd(prompts_path: str, profile_path: str | None, lexicon: str | None,
              limit: int | None) -> None:
    """Score prompts: one JSON line each (index, features, score, or error)."""
    try:
        profile = RouterProfile.load(profile_path or settings().router_profile)
        idx, texts, bad = _valid_prompts(prompts_path)
        extractor = _extractor(lexicon)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    if limit is not None:
        keep = [k for k, i in enumerate(idx) if i < limit]
        idx, texts = [idx[k] for k in keep], [texts[k] for k in keep]
        bad = [(i, e) for i, e in bad if i < limit]
    feats = features_with_progress(extractor, texts, "score")
    scores = profile.raw_scores(feats) + np.array([tie_break(t) for t in texts])
    rows = [(i, {"index": i, "features": dict(zip(FEATURE_NAMES, map(int, f), strict=True)),
                 "score": round(float(s), 6)}) for i, f, s in zip(idx, feats, scores, strict=True)]
    rows += [(i, {"index": i, "error": e}) for i, e in bad]
    for _, row in sorted(rows, key=lambda r: r[0]):
        click.echo(json.dumps(row))


@command.command("show")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None)
def show_cmd(profile_path: str | None) -> None:
    """Print a router profile's weights, normalisation and thresholds."""
    try:
        profile = RouterProfile.load(profile_path or settings().router_profile)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    click.echo(f"fitted on {profile.fit_size} prompts from {profile.source or '?'} "
               f"(lexicon: {profile.lexicon or '?'}), created {profile.created}")
    click.echo(f"{'feature':<18} {'weight':>8} {'mean':>8} {'std':>8}")
    for name, w, m, s in zip(profile.feature_names, profile.weights, profile.mean, profile.std,
                             strict=True):
        click.echo(f"{name:<18} {w:>8.3f} {m:>8.3f} {s:>8.3f}")
    _print_thresholds(profile)


@command.command("tune")
@click.option("--prompts", "prompts_path", required=True, type=click.Path(dir_okay=False),
              help="Prompt set whose per-prompt scores are in --scores (line = prompt index).")
@click.option("--scores", "scores_dir", required=True, type=click.Path(file_okay=False),
              help="Folder with scores_model_K.txt (4 lines per prompt, column 1 = P(real)).")
@click.option("--pairs", default=None, help="Pairs light:heavy, e.g. 0:3,1:3 (default: all).")
@click.option("--candidates", type=click.Path(dir_okay=False), default=None,
              help="Extra starting weight vectors, one per line (e.g. the artifact's 400).")
@click.option("--holdout", type=click.FloatRange(0.05, 0.95), default=0.3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--random", "n_random", type=click.IntRange(min=0), default=2000,
              show_default=True, help="Random starting candidates.")
@click.option("--rounds", type=click.IntRange(min=0), default=6, show_default=True)
@click.option("--lexicon", type=click.Path(dir_okay=False), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write a router profile with the tuned weights, fitted on all prompts.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def tune_cmd(prompts_path: str, scores_dir: str, pairs: str | None, candidates: str | None,
             holdout: float, seed: int, n_random: int, rounds: int, lexicon: str | None,
             out: str | None, as_json: bool) -> None:
    """Tune the router weights to capture the heavy model's quality gain."""
    try:
        prompts = read_prompts(prompts_path)
        scores = read_model_scores(scores_dir, len(prompts))
        pair_list = _parse_pairs(pairs, sorted(scores))
        cands = np.loadtxt(candidates, ndmin=2) if candidates else None
        if cands is not None and cands.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"{candidates}: rows need {len(FEATURE_NAMES)} weights")
        idx, texts, _ = _valid_prompts(prompts_path)
        extractor = _extractor(lexicon)
        feats = features_with_progress(extractor, texts, "features")
        from tqdm import tqdm

        with tqdm(desc="tune", unit="cand", file=sys.stderr) as bar:
            result = tune_and_evaluate(
                feats, texts, prompt_gains(scores, pair_list)[:, idx], holdout=holdout,
                seed=seed, candidates=cands, n_random=n_random, rounds=rounds,
                progress=bar.update,
            )
    except _ERRORS as exc:
        raise _fail(exc) from exc
    if out:
        fit_profile(feats, texts, result["weights"], lexicon=extractor.lexicon_source,
                    source=f"{prompts_path} (weights tuned by hadis router tune)").save(out)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"\ntuned on {result['train_size']} prompts, held out {result['test_size']} "
               f"(seed {seed}); pairs {pair_list}; {result['tried']} candidates tried")
    click.echo("weights: " + " ".join(f"{w:.2f}" for w in result["weights"]))
    click.echo(f"\n{'held-out gain capture':<24}" + "".join(f"r={r:<6}" for r in DEFAULT_RATIOS))
    for name in ("tuned", "reference", "random"):
        click.echo(f"{name:<24}" + "".join(f"{v:<8.3f}" for v in result["held_out"][name]))
    if out:
        click.echo(f"\nrouter profile -> {out}")
