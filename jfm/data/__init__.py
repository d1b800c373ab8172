"""Built-in datasets. STUB: to be written (helper D)."""
