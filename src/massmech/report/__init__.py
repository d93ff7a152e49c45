"""massmech.report."""
