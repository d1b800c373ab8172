"""Fields: model adapters and transforms of per-example vector fields (guidance, score
from velocity)."""

from .density import density_guidance as density_guidance
from .guidance import classifier_free_guidance as classifier_free_guidance
from .model import (
    ModelField as ModelField,
    field_from_model as field_from_model,
    split_model as split_model,
)
from .score import (
    ScoreFromVelocity as ScoreFromVelocity,
    score_from_velocity as score_from_velocity,
)
