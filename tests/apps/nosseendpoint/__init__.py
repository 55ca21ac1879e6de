"""An SSE listener with no endpoint anywhere: a configuration error at start-up."""
