"""Built-in datasets. Importing a module registers its datasets; pyproject.toml's entry points
say which module holds which, so a lookup imports only the dataset it asks for."""
