"""Developer tools: test-checkpoint generators, engine builders and the load test (never imported by the runtime)."""
