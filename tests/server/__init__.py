"""Tests of the model server (server_image/modelserver), over HTTP against real processes."""
