"""``hadis router``: fit, score, tune and inspect the prompt hardness router."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence

import click
import numpy as np

from hadis_celery.settings import settings
from planner.reference import ReferenceDataError, read_model_scores, read_prompts
from planner.router.features import (
    DEFAULT_FEATURES,
    FEATURE_NAMES,
    FEATURE_SETS,
    FeatureExtractor,
)
from planner.router.language import unreadable_reason
from planner.router.profile import (
    DEFAULT_NORMALISE,
    NORMALISATIONS,
    REFERENCE_WEIGHTS,
    UNREADABLE_QUANTILE,
    RouterProfile,
    RouterProfileError,
    fit_profile,
    tie_break,
)
from planner.router.prompt import validate_prompt
from planner.router.tuning import (
    DEFAULT_PER_ROUND,
    DEFAULT_RANDOM,
    DEFAULT_RATIOS,
    DEFAULT_ROUNDS,
    all_pairs,
    prompt_gains,
    tune_and_evaluate,
)

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
    """(indices, texts) of the valid lines, and (index, error) for the others.

    Lines end at ``\n`` only (``read_prompts``), so line i is prompt i whatever it holds.
    """
    idx, texts, bad = [], [], []
    for i, line in enumerate(read_prompts(path)):
        try:
            texts.append(validate_prompt(line))
            idx.append(i)
        except ValueError as exc:
            bad.append((i, str(exc)))
    return idx, texts, bad


def features_with_progress(
    extractor: FeatureExtractor, texts: Sequence[str], desc: str = "features", chunk: int = 512,
    features: str = DEFAULT_FEATURES,
) -> np.ndarray:
    from tqdm import tqdm

    out = np.zeros((len(texts), len(FEATURE_NAMES)))
    with tqdm(total=len(texts), desc=desc, unit="prompt", file=sys.stderr,
              disable=len(texts) < chunk) as bar:
        for i in range(0, len(texts), chunk):
            out[i : i + chunk] = extractor.extract_many(texts[i : i + chunk],
                                                        features=features)
            bar.update(min(chunk, len(texts) - i))
    return out


def _mix_features(extractor: FeatureExtractor, paths: Sequence[str], features: str
                  ) -> tuple[np.ndarray, list[str]]:
    """Features and texts of the valid lines of every prompt file in ``paths``."""
    rows, texts = [], []
    for path in paths:
        _, t, _ = _valid_prompts(path)
        rows.append(features_with_progress(extractor, t, f"mix {path}", features=features))
        texts += t
    return (np.vstack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))), texts


_FEATURES_OPT = click.option(
    "--features", "feature_set", type=click.Choice(FEATURE_SETS), default=DEFAULT_FEATURES,
    show_default=True, help="Feature definitions: the artifact's or the project's refined set.")
_NORMALISE_OPT = click.option(
    "--normalise", type=click.Choice(NORMALISATIONS), default=DEFAULT_NORMALISE,
    show_default=True, help="quantile: bounded, robust out of distribution; zscore: legacy.")


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
@_FEATURES_OPT
@_NORMALISE_OPT
@click.option("--mix", "mix_paths", multiple=True, type=click.Path(dir_okay=False),
              help="More prompt files for the normalisation's reference mix (repeatable), "
                   "e.g. long user prompts; the fit set is always part of it.")
@click.option("--unreadable-quantile", type=click.FloatRange(0.0, 1.0),
              default=UNREADABLE_QUANTILE, show_default=True,
              help="Fit-set quantile where prompts the features cannot read score "
                   "(1.0: above every fit prompt, i.e. heavy).")
def fit_cmd(prompts_path: str, out: str, weights: str | None, weights_from: str | None,
            lexicon: str | None, feature_set: str, normalise: str, mix_paths: tuple[str, ...],
            unreadable_quantile: float) -> None:
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
        feats = features_with_progress(extractor, texts, "fit", features=feature_set)
        mix, _ = _mix_features(extractor, mix_paths, feature_set)
        profile = fit_profile(feats, texts, w, lexicon=extractor.lexicon_source,
                              source=str(prompts_path), feature_set=feature_set,
                              normalise=normalise, norm_features=np.vstack([feats, mix]),
                              norm_source=" + ".join((str(prompts_path), *mix_paths)),
                              unreadable_quantile=unreadable_quantile)
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
    """Score prompts: one JSON line per input line (index, features, score, or error).

    Prompts the features cannot read carry ``"unreadable": reason`` and the profile's
    deliberate score instead of a feature-based one.
    """
    try:
        profile = RouterProfile.load(profile_path or settings().router_profile)
        n_lines = len(read_prompts(prompts_path))
        idx, texts, bad = _valid_prompts(prompts_path)
        extractor = _extractor(lexicon)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    if limit is not None:
        keep = [k for k, i in enumerate(idx) if i < limit]
        idx, texts = [idx[k] for k in keep], [texts[k] for k in keep]
        bad = [(i, e) for i, e in bad if i < limit]
        n_lines = min(n_lines, limit)
    feats = features_with_progress(extractor, texts, "score", features=profile.features)
    scores = profile.raw_scores(feats) + np.array([tie_break(t) for t in texts])
    rows = []
    for i, t, f, s in zip(idx, texts, feats, scores, strict=True):
        row = {"index": i, "features": dict(zip(FEATURE_NAMES, map(int, f), strict=True))}
        reason = unreadable_reason(t)
        if reason:
            row["unreadable"] = reason
            s = profile.unreadable_score(t)
        row["score"] = round(float(s), 6)
        rows.append((i, row))
    rows += [(i, {"index": i, "error": e}) for i, e in bad]
    if len(rows) != n_lines:
        raise click.ClickException(f"{prompts_path}: {n_lines} lines but {len(rows)} rows "
                                   "scored; refusing to print shifted rows")
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
    click.echo(f"features: {profile.features}; normalisation: {profile.normalise}"
               + (f" over {profile.norm_size} prompts ({profile.norm_source})"
                  if profile.norm_size else "")
               + f"; unreadable prompts score at fit quantile {profile.unreadable_quantile:g}")
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
@click.option("--random", "n_random", type=click.IntRange(min=0), default=DEFAULT_RANDOM,
              show_default=True, help="Random starting candidates.")
@click.option("--rounds", type=click.IntRange(min=0), default=DEFAULT_ROUNDS, show_default=True)
@click.option("--per-round", type=click.IntRange(min=1), default=DEFAULT_PER_ROUND,
              show_default=True, help="Local moves tried per round.")
@click.option("--shift", "shift_path", type=click.Path(dir_okay=False), default=None,
              help="Prompts without scores (e.g. long user prompts): part of the "
                   "normalisation mix, and the shift constraint (at every tuning ratio r "
                   "at least r of them go heavy).")
@_FEATURES_OPT
@_NORMALISE_OPT
@click.option("--lexicon", type=click.Path(dir_okay=False), default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write a router profile with the tuned weights, fitted on all prompts "
                   "(normalisation over all prompts and all --shift prompts).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def tune_cmd(prompts_path: str, scores_dir: str, pairs: str | None, candidates: str | None,
             holdout: float, seed: int, n_random: int, rounds: int, per_round: int,
             shift_path: str | None, feature_set: str, normalise: str, lexicon: str | None,
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
        feats = features_with_progress(extractor, texts, "features", features=feature_set)
        shift_feats, shift_texts = (_mix_features(extractor, [shift_path], feature_set)
                                    if shift_path else (None, None))
        from tqdm import tqdm

        with tqdm(desc="tune", unit="cand", file=sys.stderr) as bar:
            result = tune_and_evaluate(
                feats, texts, prompt_gains(scores, pair_list)[:, idx], holdout=holdout,
                seed=seed, candidates=cands, n_random=n_random, rounds=rounds,
                per_round=per_round, normalise=normalise, shift_feats=shift_feats,
                shift_texts=shift_texts, progress=bar.update,
            )
        result["features"] = feature_set
    except _ERRORS as exc:
        raise _fail(exc) from exc
    if out:
        mix = feats if shift_feats is None else np.vstack([feats, shift_feats])
        fit_profile(feats, texts, result["weights"], lexicon=extractor.lexicon_source,
                    source=f"{prompts_path} (weights tuned by hadis router tune)",
                    feature_set=feature_set, normalise=normalise, norm_features=mix,
                    norm_source=" + ".join(p for p in (prompts_path, shift_path) if p)).save(out)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"\ntuned on {result['train_size']} prompts, held out {result['test_size']} "
               f"(seed {seed}); pairs {pair_list}; {result['tried']} candidates tried; "
               f"features {feature_set}, {normalise} normalisation")
    click.echo("weights: " + " ".join(f"{w:.2f}" for w in result["weights"]))
    click.echo(f"\n{'held-out gain capture':<24}" + "".join(f"r={r:<6}" for r in DEFAULT_RATIOS))
    for name in ("tuned", "reference", "random"):
        click.echo(f"{name:<24}" + "".join(f"{v:<8.3f}" for v in result["held_out"][name]))
    if "shift" in result:
        sh = result["shift"]
        click.echo(f"{'--shift sent heavy':<24}"
                   + "".join(f"{v:<8.3f}" for v in sh["held_out_heavy_share"])
                   + f"(held-out {sh['test_size']}; shortfall {sh['shortfall']:g})")
    if out:
        click.echo(f"\nrouter profile -> {out}")
