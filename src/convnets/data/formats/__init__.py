"""One module per dataset format, each with ``recognise(path) -> bool`` and ``load(path, options) -> Dataset``.

:func:`convnets.data.load_dataset` walks :data:`convnets.data.datasets.FORMATS`, these (recognise,
load) pairs, and loads a directory with the first format that recognises it.
"""
