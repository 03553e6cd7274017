"""Who may call and how often: gate, token reviews, TLS, rate limit; imports serving and below."""
