"""Model-side code of the workers: the model backends (``workers.backends``) and the CLIP
discriminator (``workers.discriminator``, trained by ``workers.training``).

Plain Python over torch/diffusers/transformers: the Celery tasks that drive these objects
live elsewhere. Heavy libraries are imported lazily, so that a replay worker (numpy and
Pillow only) starts in well under a second.
"""
