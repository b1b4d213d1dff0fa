"""Teacher generation: OpenAI-compatible client, resumable shards, rejection sampling, a local CPU server."""
