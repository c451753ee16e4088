"""Experiments over many runs: sweeps (:mod:`.sweep`), their report (:mod:`.report`) and plots
(:mod:`.plots`)."""
