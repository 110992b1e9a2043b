"""Developer tools: test-checkpoint generators and engine builders (never imported by the runtime)."""
