"""massmech.diagnostics."""
