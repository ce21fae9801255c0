"""Who may open what: console links (tokens), console-page sessions, rate limits."""
