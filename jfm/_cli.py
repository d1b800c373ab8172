# STUB: the `jfm` command line.
def main(argv=None):
    raise NotImplementedError
