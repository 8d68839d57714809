"""The HTTP gateway: authenticates, validates, and turns REST calls into bus traffic."""
