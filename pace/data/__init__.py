"""Audio in, features out: reading, frontends, datasets and class-incremental scenarios."""
