"""Small random-weight components built offline, in code: a byte-level CLIP tokenizer, a
2-layer CLIP text encoder, a small UNet and VAE (the ``tiny`` backend) and a tiny CLIPModel
(the discriminator in tests). Weights are deterministic under a seed, so two processes
that build the same tiny model get the same network.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPTokenizer

MAX_LENGTH = 77
TINY_WIDTH = 32  # hidden size of the tiny text encoder = UNet cross-attention width
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_vocab() -> dict[str, int]:
    """Every byte as a token, alone and word-final: any text tokenizes, character by character."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer over a locally written byte-level vocabulary (no hub access)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="hadis-tiny-tok-") as tmp:
        vocab, merges = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab.write_text(json.dumps(tiny_vocab()), encoding="utf-8")
        merges.write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(
            tmp, model_max_length=MAX_LENGTH, bos_token=BOS, eos_token=EOS, unk_token=EOS,
            pad_token=EOS, local_files_only=True,
        )


def _token_ids() -> dict[str, int]:
    vocab = tiny_vocab()
    return {"vocab_size": len(vocab), "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS],
            "pad_token_id": vocab[EOS]}


def tiny_text_config(width: int = TINY_WIDTH) -> dict[str, Any]:
    return dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_LENGTH, **_token_ids())


def tiny_pipeline_components(seed: int = 0) -> dict[str, Any]:
    """The components of a StableDiffusionPipeline, random weights fixed by ``seed``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TINY_WIDTH,
            attention_head_dim=8, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
            norm_num_groups=32, sample_size=64,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config()))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder,
            "tokenizer": tiny_tokenizer(), "scheduler": scheduler,
            "safety_checker": None, "feature_extractor": None}


def tiny_clip_model(seed: int = 0, image_size: int = 32, width: int = 32) -> CLIPModel:
    """A tiny random CLIPModel (vision + text towers), for the discriminator in tests."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                  num_attention_heads=4, image_size=image_size, patch_size=max(image_size // 8, 1))
    config = CLIPConfig(text_config=tiny_text_config(width), vision_config=vision,
                        projection_dim=width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval()


def tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    """The components of a StableDiffusionXLPipeline (two text encoders, a UNet with SDXL's
    size-and-crop conditioning), random weights fixed by ``seed``: a second architecture
    for tests, built offline like ``tiny_pipeline_components``."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    width = TINY_WIDTH
    time_dim = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=time_dim, transformer_layers_per_block=(1, 1),
            # 6 size/crop numbers x time_dim, plus the pooled text embedding
            projection_class_embeddings_input_dim=6 * time_dim + width,
            cross_attention_dim=2 * width, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
            norm_num_groups=32, sample_size=64,
        )
        config = CLIPTextConfig(**tiny_text_config(width), projection_dim=width)
        text_encoder = CLIPTextModel(config)
        text_encoder_2 = CLIPTextModelWithProjection(config)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, "tokenizer": tiny_tokenizer(),
            "tokenizer_2": tiny_tokenizer(), "scheduler": scheduler,
            "image_encoder": None, "feature_extractor": None}


def save_tiny_pipeline(folder: str | Path, arch: str = "sd", seed: int = 0) -> Path:
    """Write a tiny pipeline folder with ``save_pretrained`` (``arch``: ``sd`` for SD-1.x,
    ``sdxl``), loadable by the diffusers backend like any real model folder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if arch == "sd":
        pipe = StableDiffusionPipeline(**tiny_pipeline_components(seed),
                                       requires_safety_checker=False)
    elif arch == "sdxl":
        pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed))
    else:
        raise ValueError(f"unknown tiny architecture {arch!r} (sd, sdxl)")
    pipe.save_pretrained(str(folder))
    return Path(folder)
