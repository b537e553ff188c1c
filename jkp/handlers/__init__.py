"""HTTP handlers of jkp; each module exports ``default_handlers``."""
