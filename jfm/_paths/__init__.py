from .affine import AffinePath as AffinePath
from .base import (
    AbstractConvertiblePath as AbstractConvertiblePath,
    AbstractFlowPath as AbstractFlowPath,
    AbstractPath as AbstractPath,
)
from .bridge import SchrodingerBridgePath as SchrodingerBridgePath
from .diffusion import DiffusionSDE as DiffusionSDE
from .isotropic import (
    CDFReport as CDFReport,
    IsotropicPath as IsotropicPath,
    check_cdf as check_cdf,
)
from .poisson import PoissonPath as PoissonPath
from .schedule import (
    VE as VE,
    VP as VP,
    AbstractSchedule as AbstractSchedule,
    CondOT as CondOT,
    Cosine as Cosine,
    CustomSchedule as CustomSchedule,
    Polynomial as Polynomial,
)
