"""massmech.causal."""
