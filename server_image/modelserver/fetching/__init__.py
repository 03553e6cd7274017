"""Downloading the model before the server starts (init container); imports only core and uris."""
