"""massmech.studies.quant."""
