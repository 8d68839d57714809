"""A simulated OpenAI-compatible model server: deterministic echoes, paced like a real LLM."""
