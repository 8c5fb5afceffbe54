"""i2i: pluggable paired image-to-image translation (pix2pix family)."""

__version__ = "0.1.0"
