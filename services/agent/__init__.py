"""The agent: runs chat jobs from JetStream through an OpenAI-compatible model."""
