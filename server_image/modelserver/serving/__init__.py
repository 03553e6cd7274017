"""The data plane: each endpoint apart from HTTP, what it admits; imports monitoring and below."""
