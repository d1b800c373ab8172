# STUB: to be written (helper C).
def field_from_model(*a, **k):
    raise NotImplementedError


def split_model(*a, **k):
    raise NotImplementedError


class ModelField:
    pass
