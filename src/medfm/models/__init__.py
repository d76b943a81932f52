"""Model zoo: encoders by name, release bundles."""
