"""The seed README's Overview example: an SSE listener that forwards events by RPC."""
