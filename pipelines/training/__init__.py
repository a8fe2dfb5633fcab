"""Training: every model the project trains itself, one module each (the actors keep only what inference needs)."""
