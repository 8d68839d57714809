"""Infrastructure every service shares that is not a contract: settings, logging, bus."""
