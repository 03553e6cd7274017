"""What every part shares: errors, digests, termination log, log lines, flags; imports no part."""
