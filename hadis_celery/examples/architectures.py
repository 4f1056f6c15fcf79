"""The packaged example's model architectures (diffusers configs), for timing on a GPU.

``bench.backends`` builds each with random weights and times it per batch size; a user's own
models are timed from their weights (``hadis profile``). The configs follow the public model
cards' ``config.json`` of the four models of the reference profile.
"""

from __future__ import annotations

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, use_linear_projection=True,
)
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048,
                   pos_embed_max_size=384, qk_norm="rms_norm",
                   dual_attention_layers=tuple(range(13)))
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38,
                  attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                  caption_projection_dim=2432, pooled_projection_dim=2048,
                  pos_embed_max_size=192, qk_norm="rms_norm")
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
# name, denoiser kind, config, latent channels, steps, classifier-free guidance
ARCHITECTURES = (
    ("SDXL-Lightning", "unet", SDXL_UNET, 4, 2, False),
    ("SD3.5-Large-Turbo", "sd3", SD35_LARGE, 16, 4, False),
    ("SD3.5-Medium", "sd3", SD35_MEDIUM, 16, 50, True),
    ("SD3.5-Large", "sd3", SD35_LARGE, 16, 50, True),
)
