"""The chatbus services: gateway, agent, history, memory, and their launcher."""
