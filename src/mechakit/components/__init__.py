"""mechakit's built-in drivers: one module per component type string."""
