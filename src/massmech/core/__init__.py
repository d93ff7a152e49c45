"""massmech.core."""
