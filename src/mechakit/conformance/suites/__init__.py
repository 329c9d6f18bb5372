"""One suite module per component type; each holds a mixin class with ``category``."""
