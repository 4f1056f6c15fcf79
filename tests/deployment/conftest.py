"""Deployment files and artifact-layout profile folders of other model sets, built from the
reference measurements (models renamed and renumbered, a short prompt set)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import pytest

from planner.reference import IMAGES_PER_PROMPT

N_PROMPTS = 200


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_deployment(path: Path, models: Sequence[dict], *, table: dict, router: str,
                     name: str = "test", **top) -> Path:
    """A deployment TOML: ``models`` are dicts of the [[models]] keys (sub-tables as dicts)."""
    lines = [f"name = {toml_value(name)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in top.items()]
    lines += ["", "[table]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    lines += ["", "[router]", f"profile = {toml_value(router)}"]
    for m in models:
        lines += ["", "[[models]]"]
        subs = {k: v for k, v in m.items() if isinstance(v, dict) and k != "latency"}
        lines += [f"{k} = {toml_value(v)}" for k, v in m.items() if k not in subs]
        for k, v in subs.items():
            lines += [f"[models.{k}]"] + [f"{a} = {toml_value(b)}" for a, b in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_profile(root: Path, reference: Path, keep: Sequence[int],
                 heavy_alone: bool = True) -> Path:
    """An artifact-layout folder with the reference models ``keep`` renumbered 0..k-1, the
    first ``N_PROMPTS`` prompts (and their scores), beside a ``prompts/`` folder.
    ``heavy_alone=False`` drops the rows that send every query to the heavy model."""
    src = reference / "profile-sd35"
    new = {old: i for i, old in enumerate(keep)}
    folder = root / "profile"
    folder.mkdir(parents=True)
    with (src / "config_results_hybrid.csv").open() as fh, \
            (folder / "config_results_hybrid.csv").open("w", newline="") as out:
        reader, writer = csv.reader(fh), csv.writer(out)
        writer.writerow(next(reader))
        for row in reader:
            a, b = int(float(row[0])), int(float(row[1]))
            alone = float(row[2]) == 1 or float(row[3]) == 1
            if a in new and b in new and (heavy_alone or not alone):
                writer.writerow([new[a], new[b], *row[2:]])
    for old, i in new.items():
        lines = (src / f"scores_model_{old}.txt").read_text().splitlines()
        (folder / f"scores_model_{i}.txt").write_text(
            "\n".join(lines[:N_PROMPTS * IMAGES_PER_PROMPT]) + "\n")
    (root / "prompts").mkdir()
    prompts = (reference / "prompts" / "imagenet1k_captions_5k.txt").read_text().splitlines()
    (root / "prompts" / "captions.txt").write_text("\n".join(prompts[:N_PROMPTS]) + "\n")
    return folder


@pytest.fixture(scope="session")
def router_json() -> str:
    from hadis_celery.settings import DEFAULT_ROUTER_PROFILE

    return str(DEFAULT_ROUTER_PROFILE)


@pytest.fixture()
def short_trace(tmp_path: Path, reference: Path) -> Path:
    """The first 400 arrivals of the 1-to-20 qps trace (prompt indices wrap)."""
    lines = (reference / "traces" / "azure_multi_1to20qps.txt").read_text().splitlines()
    path = tmp_path / "short_trace.txt"
    path.write_text("\n".join(lines[:400]) + "\n")
    return path
