"""Models as plans: a preset's knobs become a plan (pure data), which geometry checks and torch builds."""
