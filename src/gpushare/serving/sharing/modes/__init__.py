"""The registered sharing modes, one module each, named after the mode."""
