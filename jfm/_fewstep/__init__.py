"""Few-step generation: reflow, consistency models, MeanFlow, shortcut models, and one
few-step sampler (:func:`sample_few_step`) on the sampling core."""

from .consistency import (
    ConsistencyMap as ConsistencyMap,
    consistency_distillation_loss as consistency_distillation_loss,
    consistency_map as consistency_map,
    consistency_tangent as consistency_tangent,
    consistency_training_loss as consistency_training_loss,
    continuous_consistency_loss as continuous_consistency_loss,
)
from .meanflow import (
    meanflow_loss as meanflow_loss,
    meanflow_target as meanflow_target,
    meanflow_times as meanflow_times,
)
from .reflow import (
    ReflowCoupling as ReflowCoupling,
    reflow_coupling as reflow_coupling,
    reflow_pairs as reflow_pairs,
)
from .sampler import (
    FewStepSolver as FewStepSolver,
    TwoTimeField as TwoTimeField,
    sample_few_step as sample_few_step,
    two_time_field as two_time_field,
)
from .shortcut import shortcut_loss as shortcut_loss, shortcut_target as shortcut_target
