"""massmech.studies.twins."""
