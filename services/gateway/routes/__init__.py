"""The gateway's HTTP edges, one router per resource."""
