"""What every part shares: errors, digests, termination log, log lines; imports no other part."""
