"""What the model saw and answered: metrics, drift, payload log; imports protocols and below."""
