"""The delivery guide's example: limits on a consumer, and an idempotent one."""
