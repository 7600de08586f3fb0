"""YAML recipes: schema, template, running one, and its quality gates."""
