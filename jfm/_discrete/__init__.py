"""Discrete flow matching: mixture paths on token sequences, losses, the CTMC sampler,
guidance and exact discrete ground truth."""

from .analytic import (
    DiscreteMixture as DiscreteMixture,
    ExactDenoiser as ExactDenoiser,
    MarkovChain as MarkovChain,
)
from .loss import dfm_loss as dfm_loss
from .path import MixtureDiscretePath as MixtureDiscretePath
from .sampler import (
    DiscreteGuidance as DiscreteGuidance,
    DiscreteSolution as DiscreteSolution,
    ModelDenoiser as ModelDenoiser,
    denoiser_from_model as denoiser_from_model,
    discrete_guidance as discrete_guidance,
    sample_discrete as sample_discrete,
)
