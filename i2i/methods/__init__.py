"""Training methods, one file each: ``pix2pix`` (paired), ``cyclegan`` and ``cut`` (unpaired).

A method owns its networks, its losses and its training step (``i2i.contracts.Method``);
the engine runs any of them. docs/methods.md tells how to write one.
"""
