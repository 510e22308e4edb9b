"""Research diagnostics behind docs/tiny_recipe.md (`python -m tools.research.learnability`, `.diagnose_embeddings`)."""
