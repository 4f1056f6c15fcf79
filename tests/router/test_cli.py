"""The ``hadis router`` commands, run in-process through click."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hadis_celery.cli import main
from planner.router import RouterProfile


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_fit_then_score(tmp_path, reference, lexicon_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog on a sofa\n\n   \na man riding a horse next to a barn\n"
                       "Barack Obama in Paris\n")
    out = tmp_path / "router.json"
    r = run("router", "fit", "--prompts", str(prompts), "--out", str(out),
            "--lexicon", str(lexicon_path))
    assert r.exit_code == 0, r.output
    assert "fitted on 3 prompts (2 invalid lines skipped)" in r.output
    assert RouterProfile.load(out).fit_size == 3
    r = run("router", "score", "--prompts", str(prompts), "--profile", str(out),
            "--lexicon", str(lexicon_path))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    assert "empty" in rows[1]["error"] and "empty" in rows[2]["error"]
    assert rows[4]["features"]["named_entities"] == 2
    # artifact features (the default): "next to" and its "to" both count
    assert rows[3]["features"]["spatial_relations"] == 2


def test_fit_options_are_saved_and_shown(tmp_path, lexicon_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog on a sofa\na man riding a horse next to a barn\na red ball\n")
    mix = tmp_path / "mix.txt"
    mix.write_text("a highly detailed, intricate portrait of a wizard, by greg rutkowski\n")
    out = tmp_path / "router.json"
    r = run("router", "fit", "--prompts", str(prompts), "--out", str(out), "--lexicon",
            str(lexicon_path), "--features", "refined", "--normalise", "quantile",
            "--mix", str(mix), "--unreadable-quantile", "0.8")
    assert r.exit_code == 0, r.output
    profile = RouterProfile.load(out)
    assert (profile.features, profile.normalise, profile.unreadable_quantile) == (
        "refined", "quantile", 0.8)
    assert profile.fit_size == 3 and profile.norm_size == 4
    r = run("router", "show", "--profile", str(out))
    assert "features: refined; normalisation: quantile over 4 prompts" in r.output
    r = CliRunner().invoke(main, ["router", "fit", "--prompts", str(prompts), "--out",
                                  str(out), "--features", "paper"])
    assert r.exit_code == 2 and "'paper' is not one of 'artifact', 'refined'" in r.output


def test_score_splits_on_newlines_only(tmp_path, lexicon_path):
    """A lone carriage return inside a line used to split it: every later row shifted."""
    prompts = tmp_path / "p.txt"
    prompts.write_bytes("a dog\ron a sofa\r\n富士山の写真\nBarack Obama in Paris\n"
                        .encode())
    r = run("router", "score", "--prompts", str(prompts), "--lexicon", str(lexicon_path))
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2]
    assert rows[0]["features"]["prompt_length"] == 5  # "a dog on a sofa", one prompt
    assert rows[1]["unreadable"] == "non-latin"
    assert rows[2]["features"]["named_entities"] == 2 and "unreadable" not in rows[2]


def test_tune_writes_profile(tmp_path, reference, lexicon_path):
    out = tmp_path / "tuned.json"
    r = run("router", "tune", "--prompts", str(reference / "prompts/imagenet1k_captions_5k.txt"),
            "--scores", str(reference / "profile-sd35"), "--pairs", "0:3,1:3",
            "--random", "100", "--rounds", "1", "--lexicon", str(lexicon_path),
            "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(RouterProfile.load(out).weights) == result["weights"]
    assert set(result["held_out"]) == {"tuned", "reference", "random"}


def test_errors_are_one_line_messages(tmp_path):
    bad_scores = tmp_path / "scores"
    bad_scores.mkdir()
    (bad_scores / "scores_model_0.txt").write_text("0.1 0.9\n" * 6)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog\na cat\n")
    r = CliRunner().invoke(main, ["router", "tune", "--prompts", str(prompts),
                                  "--scores", str(bad_scores)])
    assert r.exit_code == 1
    assert "not a multiple of 4" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["router", "score", "--prompts", str(prompts),
                                  "--profile", str(tmp_path / "none.json")])
    assert r.exit_code == 1 and "router profile not found" in r.output
    r = CliRunner().invoke(main, ["router", "fit", "--prompts", str(prompts), "--out",
                                  str(tmp_path / "x.json"), "--weights", "1 2 3"])
    assert r.exit_code == 2 and "need 8 finite weights" in r.output
