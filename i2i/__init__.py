"""i2i: pluggable image-to-image translation, paired (pix2pix) and unpaired (CycleGAN, CUT).

``i2i.load(source)`` gives a ``Translator`` for a trained generator (``i2i.api``) and
``i2i.train(recipe)`` trains one (``i2i.run``); they are imported on first use, so
``import i2i`` stays light.
"""

from i2i.version import __version__

__all__ = ["Translator", "load", "train"]


def __getattr__(name: str):
    if name == "train":
        from i2i.run import train

        return train
    if name in __all__:
        from i2i import api

        return getattr(api, name)
    raise AttributeError(f"module 'i2i' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
