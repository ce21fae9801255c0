"""What an operator sees of the broker at work: Prometheus metrics and the JSON audit trail,
both fed from one place (events.py) as links are minted and sessions open and end."""
