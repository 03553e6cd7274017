"""HTTP/1.1 framing that only translates HTTP for the data plane; imports access and below."""
