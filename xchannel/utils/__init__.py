"""Small shared utilities: atomic files, safe loading, typed configs."""
