"""The training engine: build a run from a recipe, train it, save and resume it."""
