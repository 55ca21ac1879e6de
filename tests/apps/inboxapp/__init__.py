"""A service with an idempotent consumer: `farine migrate` creates its inbox table."""
