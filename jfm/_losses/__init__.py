"""Training losses (per example, optax style) and time samplers.

One weighted regression core (``regression.py``); the public losses are thin names over
it: ``cfm.py`` (conditional flow matching), ``score.py`` (DSM, noise and data prediction),
``empirical.py`` (the empirical-field loss). ``time.py`` holds the time samplers. Losses
return one value per example (shape ``(B,)``); the train step reduces them.
"""

from .cfm import cfm_loss as cfm_loss
from .empirical import empirical_field_loss as empirical_field_loss
from .score import dsm_loss as dsm_loss, eps_loss as eps_loss, x1_loss as x1_loss
from .time import logit_normal_time as logit_normal_time, uniform_time as uniform_time
