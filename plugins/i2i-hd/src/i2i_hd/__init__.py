"""pix2pixHD-style components for i2i, found through entry points (see pyproject.toml).

Each component lives in its own module so that i2i imports only what a recipe uses.
"""
