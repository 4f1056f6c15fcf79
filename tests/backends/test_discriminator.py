"""The CLIP discriminator: training on real photographs vs tiny-backend outputs, scoring,
the head file round trip, the CLI, and refusal of bad images and files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hadis_celery.commands.discriminator import command as discriminator_cli
from workers.discriminator import Discriminator, MLPHead, Score, load_head
from workers.errors import DiscriminatorError, ImageInputError
from workers.training import random_crops, roc_auc, train_head


@pytest.fixture(scope="module")
def trained(real_photos, generated_images):
    rng = random.Random(0)
    real, groups = [], []
    for name, img in real_photos.items():
        for crop in random_crops(img, 6, rng, permute_channels=True):
            real.append(crop)
            groups.append(name)
    disc = Discriminator.tiny(seed=0, device="cpu")
    result = train_head(disc, real, generated_images, real_groups=groups, progress=False)
    return disc, result


def test_training_reaches_validation_auc_above_09(trained):
    disc, result = trained
    assert result.n_val >= 20 and result.n_train >= 60
    assert result.val_auc > 0.9, result.summary()
    assert disc.head is result.head


def test_scores_are_probabilities_and_cosines(trained, real_photos, generated_images):
    disc, _ = trained
    images = [*list(real_photos.values())[:3], *generated_images[:3]]
    scores = disc.score(images, ["a photo"] * 6)
    assert all(isinstance(s, Score) for s in scores)
    assert all(0.0 <= s.quality <= 1.0 and -1.0 <= s.clip <= 1.0 for s in scores)
    # CLIP score: the text matters, and it is the cosine of the two embeddings
    other = disc.score(images[:1], ["zebra stripes under a bridge at night"])[0]
    assert other.clip != pytest.approx(scores[0].clip, abs=1e-6)
    assert other.quality == pytest.approx(scores[0].quality, abs=1e-6)


def test_batching_does_not_change_scores(trained, generated_images):
    disc, result = trained
    images, prompts = generated_images[:7], [f"prompt {i}" for i in range(7)]
    small = Discriminator.tiny(seed=0, device="cpu", batch_size=3, head=result.head)
    a = disc.score(images, prompts)
    b = small.score(images, prompts)
    for x, y in zip(a, b, strict=True):
        assert x.quality == pytest.approx(y.quality, abs=1e-5)
        assert x.clip == pytest.approx(y.clip, abs=1e-5)


def test_head_round_trip_scores_identically(trained, tmp_path, real_photos, generated_images):
    disc, result = trained
    path = tmp_path / "head.pt"
    disc.save_head(path, val_auc=result.val_auc)
    loaded = Discriminator.load(path, device="cpu")
    images = [*list(real_photos.values())[:4], *generated_images[:4]]
    prompts = [f"p{i}" for i in range(8)]
    assert loaded.score(images, prompts) == disc.score(images, prompts)
    _, meta = load_head(path)
    assert meta["clip"]["kind"] == "tiny" and meta["val_auc"] == pytest.approx(result.val_auc)


def test_clip_from_a_local_folder(tmp_path, trained, generated_images):
    from workers.tiny import tiny_clip_model, tiny_tokenizer

    disc, result = trained
    folder = tmp_path / "clip"
    tiny_clip_model(0).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    local = Discriminator.from_pretrained(folder, head=result.head, device="cpu")
    a = local.score(generated_images[:3], ["a", "b", "c"])
    b = disc.score(generated_images[:3], ["a", "b", "c"])
    for x, y in zip(a, b, strict=True):
        assert x.quality == pytest.approx(y.quality, abs=1e-6)
        assert x.clip == pytest.approx(y.clip, abs=1e-6)


def test_bad_images_are_refused_with_their_name(trained, tmp_path, generated_images):
    disc, _ = trained
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    with pytest.raises(ImageInputError, match="garbage.png: not a readable image"):
        disc.score([garbage], ["a"])
    good = tmp_path / "good.png"
    generated_images[0].save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageInputError, match="truncated.png: not a readable image"):
        disc.score([good, truncated], ["a", "b"])
    with pytest.raises(ImageInputError, match="no such image file"):
        disc.score([tmp_path / "absent.png"], ["a"])
    strict = Discriminator.tiny(seed=0, device="cpu", head=disc.head, expected_size=128)
    with pytest.raises(ImageInputError, match="size 64x64, expected 128x128"):
        strict.score([generated_images[0]], ["a"])
    with pytest.raises(ImageInputError, match="too small"):
        disc.score([np.zeros((4, 4, 3), np.uint8)], ["a"])
    with pytest.raises(DiscriminatorError, match="2 images but 1 prompts"):
        disc.score(generated_images[:2], ["a"])


def test_bad_head_and_clip_files(tmp_path, trained):
    disc, _ = trained
    with pytest.raises(DiscriminatorError, match="no such head file"):
        Discriminator.load(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00junk")
    with pytest.raises(DiscriminatorError, match="not a discriminator head file"):
        Discriminator.load(junk)
    with pytest.raises(DiscriminatorError, match="does not exist"):
        Discriminator.from_pretrained(tmp_path / "no-clip")
    wide = Discriminator.tiny(seed=0, width=64, device="cpu")
    with pytest.raises(DiscriminatorError, match="expects 32-d CLIP embeddings"):
        wide.set_head(disc.head)
    with pytest.raises(DiscriminatorError, match="no trained head"):
        Discriminator.tiny(device="cpu").score([np.zeros((32, 32, 3), np.uint8)], ["a"])


def test_roc_auc():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 500), rng.normal(size=500)
    pairs = [(a, b) for a in s[y == 1] for b in s[y == 0]]
    assert roc_auc(y, s) == pytest.approx(np.mean([a > b for a, b in pairs]))


def test_mlp_head_normalisation_is_saved(tmp_path):
    from workers.discriminator import save_head

    head = MLPHead(8, 16)
    head.set_normalisation(torch.randn(20, 8) * 3 + 1)
    save_head(head, tmp_path / "h.pt")
    loaded, _ = load_head(tmp_path / "h.pt")
    assert torch.equal(loaded.mean, head.mean) and torch.equal(loaded.std, head.std)


def test_cli_train_then_score(image_dirs, tmp_path):
    real, gen = image_dirs
    head = tmp_path / "head.pt"
    runner = CliRunner()
    result = runner.invoke(discriminator_cli, ["train", "--real", str(real), "--generated",
                                  str(gen), "--out", str(head), "--tiny-clip", "--crops", "6",
                                  "--permute-channels",
                                  "--device", "cpu"])
    assert result.exit_code == 0, result.output
    auc = float(result.output.split("validation AUC ")[1].split()[0])
    assert auc > 0.9
    assert head.is_file()
    result = runner.invoke(discriminator_cli, ["score", "--head", str(head), "--prompt",
                                  "a photo", "--device", "cpu", str(gen / "gen_000.png"),
                                  str(real / "coffee.png")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [r["image"].rsplit("/", 1)[1] for r in rows] == ["gen_000.png", "coffee.png"]
    assert rows[0]["quality"] < rows[1]["quality"]


def test_cli_errors_are_one_line(image_dirs, tmp_path):
    real, gen = image_dirs
    runner = CliRunner()
    result = runner.invoke(discriminator_cli, ["train", "--real", str(tmp_path / "nope"),
                                  "--generated", str(gen), "--out", str(tmp_path / "h.pt"),
                                  "--tiny-clip"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == f"Error: {tmp_path / 'nope'}: no such folder"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00")
    result = runner.invoke(discriminator_cli, ["score", "--head", str(junk), str(bad)])
    assert result.exit_code == 1 and "not a discriminator head file" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(discriminator_cli, ["train", "--real", str(real), "--generated",
                                  str(gen), "--out", str(tmp_path / "h.pt"), "--tiny-clip",
                                  "--device", "cuda" if not torch.cuda.is_available() else
                                  "cuda:99"])
    assert result.exit_code == 1 and "Error: device" in result.output


def test_cli_prompts_file_splits_on_newlines_only(trained, image_dirs, tmp_path):
    """A lone carriage return inside a prompt keeps it one prompt (before, universal
    newlines made it two and paired every later image with the wrong prompt); a file whose
    line count differs from the image count is one clear error."""
    disc, result = trained
    real, gen = image_dirs
    head = tmp_path / "head.pt"
    disc.save_head(head, val_auc=result.val_auc)
    images = [str(gen / "gen_000.png"), str(real / "coffee.png")]
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a photo\rof a thing\r\na cup of coffee\n")
    runner = CliRunner()
    got = runner.invoke(discriminator_cli, ["score", "--head", str(head), "--prompts",
                                            str(prompts), "--device", "cpu", *images])
    assert got.exit_code == 0, got.output
    rows = [json.loads(line) for line in got.output.strip().splitlines()]
    for row, image, prompt in zip(rows, images, ["a photo\rof a thing", "a cup of coffee"],
                                  strict=True):
        one = runner.invoke(discriminator_cli, ["score", "--head", str(head), "--prompt",
                                                prompt, "--device", "cpu", image])
        assert one.exit_code == 0, one.output
        assert json.loads(one.output) == row
    prompts.write_bytes(b"one\ntwo\nthree\n")
    got = runner.invoke(discriminator_cli, ["score", "--head", str(head), "--prompts",
                                            str(prompts), "--device", "cpu", *images])
    assert got.exit_code == 1 and "Traceback" not in got.output
    assert got.output.strip() == f"Error: {prompts}: 3 prompts (lines) for 2 images"
