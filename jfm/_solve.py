# STUB: to be written (helper B).
def sample_ode(*a, **k):
    raise NotImplementedError


class ODEResult:
    pass
