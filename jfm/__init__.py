"""jfm: flow matching and diffusion models in JAX, as pure functions.

The public namespace is flat (``jfm.<Name>``), grouped below by concept; code lives in
private modules and this file only re-exports. ``jfm.models`` (networks), ``jfm.data``
(datasets), ``jfm.metrics``, ``jfm.bench`` (solver accuracy) and ``jfm.distributed``
(meshes and sharded training) are public subpackages.
"""

# isort: off
from . import data as data, metrics as metrics, models as models

# -- probability paths and schedules ------------------------------------------------------
from ._paths import (
    VE as VE,
    VP as VP,
    AbstractConvertiblePath as AbstractConvertiblePath,
    AbstractFlowPath as AbstractFlowPath,
    AbstractPath as AbstractPath,
    AbstractSchedule as AbstractSchedule,
    AffinePath as AffinePath,
    CDFReport as CDFReport,
    CondOT as CondOT,
    Cosine as Cosine,
    CustomSchedule as CustomSchedule,
    DiffusionSDE as DiffusionSDE,
    IsotropicPath as IsotropicPath,
    PoissonPath as PoissonPath,
    Polynomial as Polynomial,
    SchrodingerBridgePath as SchrodingerBridgePath,
    check_cdf as check_cdf,
)

# -- exact ground truth -------------------------------------------------------------------
from ._analytic import GaussianMixture as GaussianMixture, MixtureField as MixtureField

# -- fields: model adapters, score <-> velocity, guidance -----------------------------------
from ._fields import (
    ModelField as ModelField,
    ScoreFromVelocity as ScoreFromVelocity,
    classifier_free_guidance as classifier_free_guidance,
    density_guidance as density_guidance,
    field_from_model as field_from_model,
    score_from_velocity as score_from_velocity,
    split_model as split_model,
)
from ._empirical import EmpiricalField as EmpiricalField, empirical_field as empirical_field

# -- sampling -----------------------------------------------------------------------------
from ._sampling import (
    AbstractCountedSolver as AbstractCountedSolver,
    PredictorCorrector as PredictorCorrector,
    Solution as Solution,
    langevin as langevin,
    sample_ode as sample_ode,
    sample_pc as sample_pc,
    sample_sde as sample_sde,
)

# -- few-NFE sampling: time grids and flow-aware solvers -------------------------------------
from ._sampling import (
    DEIS as DEIS,
    EDM as EDM,
    AbstractFlowSolver as AbstractFlowSolver,
    DPMSolverPP as DPMSolverPP,
    DPMSolverPP2S as DPMSolverPP2S,
    UniPC as UniPC,
    log_snr as log_snr,
    time_at_log_snr as time_at_log_snr,
    time_grid as time_grid,
)

# -- divergence and likelihood --------------------------------------------------------------
from ._divergence import (
    AbstractDivergence as AbstractDivergence,
    ExactDivergence as ExactDivergence,
    HutchinsonDivergence as HutchinsonDivergence,
    divergence_exact as divergence_exact,
    divergence_hutchinson as divergence_hutchinson,
)
from ._sampling import bits_per_dim as bits_per_dim, log_prob as log_prob

# -- training losses and time samplers ------------------------------------------------------
from ._losses import (
    cfm_loss as cfm_loss,
    dsm_loss as dsm_loss,
    empirical_field_loss as empirical_field_loss,
    eps_loss as eps_loss,
    logit_normal_time as logit_normal_time,
    uniform_time as uniform_time,
    x1_loss as x1_loss,
)

# -- couplings ----------------------------------------------------------------------------
from ._couplings import (
    exact_ot_coupling as exact_ot_coupling,
    independent_coupling as independent_coupling,
    label_ot_coupling as label_ot_coupling,
    sinkhorn_coupling as sinkhorn_coupling,
)

# -- few-step models: reflow, consistency, MeanFlow, shortcut, and their sampler ------------
from ._fewstep import (
    ConsistencyMap as ConsistencyMap,
    FewStepSolver as FewStepSolver,
    ReflowCoupling as ReflowCoupling,
    TwoTimeField as TwoTimeField,
    consistency_distillation_loss as consistency_distillation_loss,
    consistency_map as consistency_map,
    consistency_tangent as consistency_tangent,
    consistency_training_loss as consistency_training_loss,
    continuous_consistency_loss as continuous_consistency_loss,
    meanflow_loss as meanflow_loss,
    meanflow_target as meanflow_target,
    meanflow_times as meanflow_times,
    reflow_coupling as reflow_coupling,
    reflow_pairs as reflow_pairs,
    sample_few_step as sample_few_step,
    shortcut_loss as shortcut_loss,
    shortcut_target as shortcut_target,
    two_time_field as two_time_field,
)

# -- discrete flow matching -------------------------------------------------------------
from ._discrete import (
    DiscreteGuidance as DiscreteGuidance,
    DiscreteMixture as DiscreteMixture,
    DiscreteSolution as DiscreteSolution,
    ExactDenoiser as ExactDenoiser,
    MarkovChain as MarkovChain,
    MixtureDiscretePath as MixtureDiscretePath,
    ModelDenoiser as ModelDenoiser,
    denoiser_from_model as denoiser_from_model,
    dfm_loss as dfm_loss,
    discrete_guidance as discrete_guidance,
    sample_discrete as sample_discrete,
)

# -- training -----------------------------------------------------------------------------
from ._train import (
    NonFiniteError as NonFiniteError,
    TrainingInterrupted as TrainingInterrupted,
    TrainState as TrainState,
    best_step as best_step,
    fit as fit,
    init_train_state as init_train_state,
    latest_step as latest_step,
    make_train_step as make_train_step,
    restore_checkpoint as restore_checkpoint,
    scan_train_step as scan_train_step,
)

# -- diagnostics --------------------------------------------------------------------------
from ._continuity import ContinuityReport as ContinuityReport, check_continuity as check_continuity

# -- Riemannian flow matching --------------------------------------------------------------
from ._manifolds import (
    SO3 as SO3,
    AbstractManifold as AbstractManifold,
    AbstractManifoldDistribution as AbstractManifoldDistribution,
    AbstractManifoldSolver as AbstractManifoldSolver,
    Euclidean as Euclidean,
    FlatTorus as FlatTorus,
    GeodesicEuler as GeodesicEuler,
    GeodesicPath as GeodesicPath,
    IsotropicSO3Mixture as IsotropicSO3Mixture,
    ManifoldUniform as ManifoldUniform,
    ProductDistribution as ProductDistribution,
    ProductManifold as ProductManifold,
    ProjectedSolver as ProjectedSolver,
    Sphere as Sphere,
    VonMisesFisherMixture as VonMisesFisherMixture,
    WrappedNormalMixture as WrappedNormalMixture,
    manifold_divergence as manifold_divergence,
    manifold_log_prob as manifold_log_prob,
    riemannian_cfm_loss as riemannian_cfm_loss,
)

# -- subpackages that build on the names above ---------------------------------------------
from . import distributed as distributed  # meshes, shardings and sharded training
from . import bench as bench  # solver accuracy, sampling through jfm.sample_ode / jfm.log_prob

# isort: on

__version__ = "0.1.0"
