"""Riemannian flow matching: manifolds, geodesic paths, their loss, solvers and
likelihood, and distributions with known densities."""

from .base import AbstractManifold as AbstractManifold
from .distributions import (
    AbstractManifoldDistribution as AbstractManifoldDistribution,
    IsotropicSO3Mixture as IsotropicSO3Mixture,
    ManifoldUniform as ManifoldUniform,
    ProductDistribution as ProductDistribution,
    VonMisesFisherMixture as VonMisesFisherMixture,
    WrappedNormalMixture as WrappedNormalMixture,
)
from .euclidean import Euclidean as Euclidean
from .likelihood import (
    manifold_divergence as manifold_divergence,
    manifold_log_prob as manifold_log_prob,
)
from .path import GeodesicPath as GeodesicPath, riemannian_cfm_loss as riemannian_cfm_loss
from .product import ProductManifold as ProductManifold
from .so3 import SO3 as SO3
from .solvers import (
    AbstractManifoldSolver as AbstractManifoldSolver,
    GeodesicEuler as GeodesicEuler,
    ProjectedSolver as ProjectedSolver,
)
from .sphere import Sphere as Sphere
from .torus import FlatTorus as FlatTorus
