# STUB: to be written (helper D).
def energy_distance(*a, **k):
    raise NotImplementedError


def mmd(*a, **k):
    raise NotImplementedError
