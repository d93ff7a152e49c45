"""massmech.studies."""
