"""cnnbench: measure what CNN design choices do to accuracy, speed and cost.

The package root stays import-light (no torch) so that the Snakefile and the CLI can validate a study
in milliseconds; torch is imported only by the modules that train or build models.
"""

__version__ = "0.1.0"
