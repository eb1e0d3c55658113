"""Image generators as native diffusers / Hugging Face models: diffusion denoisers (UNet, DiT) and their pipeline,
a VAE, a VQ-VAE (and VQ-VAE-2), a GAN and a normalizing flow.

Flat files with relative imports: ``HfGenDiffusionPipeline.save_pretrained`` (and each model's ``save_pretrained``
through :func:`export_module`) writes a model's file, with everything it imports inlined, into a saved folder, the
layout diffusers loads with ``trust_remote_code=True`` (by path or by repo id) where hfgen is not installed.
"""

from .embeddings_hfgen import AttentionSettings, timestep_embedding
from .export_hfgen import HubExportMixin, export_module
from .flow_hfgen import HfGenFlowModel, HfGenFlowOutput, bits_per_dim
from .gan_hfgen import (
    HfGenGANDiscriminator,
    HfGenGANGenerator,
    discriminator_loss,
    generator_loss,
    r1_penalty,
)
from .pipeline_hfgen_diffusion import SCHEDULERS, HfGenDiffusionPipeline
from .accuracy import classifier_accuracy
from .quality import (
    HfGenDigitClassifier,
    class_spread,
    evaluate_samples,
    frechet_distance,
    train_digit_classifier,
)
from .transformer_hfgen import HfGenDiTModel
from .unet_hfgen import HfGenUNet2DModel, HfGenUNet2DOutput
from .vae_hfgen import HfGenVAEModel, HfGenVAEOutput
from .vq_hfgen import HfGenVectorQuantizer, HfGenVQModel, HfGenVQOutput

__all__ = [
    "SCHEDULERS",
    "AttentionSettings",
    "HfGenDiTModel",
    "HfGenDigitClassifier",
    "HfGenFlowModel",
    "HfGenFlowOutput",
    "HfGenGANDiscriminator",
    "HfGenGANGenerator",
    "HfGenDiffusionPipeline",
    "HfGenUNet2DModel",
    "HfGenUNet2DOutput",
    "HfGenVAEModel",
    "HfGenVAEOutput",
    "HfGenVQModel",
    "HfGenVQOutput",
    "HfGenVectorQuantizer",
    "HubExportMixin",
    "bits_per_dim",
    "class_spread",
    "classifier_accuracy",
    "discriminator_loss",
    "evaluate_samples",
    "export_module",
    "frechet_distance",
    "generator_loss",
    "r1_penalty",
    "timestep_embedding",
    "train_digit_classifier",
]
