"""Built-in generators and discriminators. Importing a module registers its networks;
pyproject.toml's entry points say which module holds which."""
