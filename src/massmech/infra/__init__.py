"""massmech.infra."""
