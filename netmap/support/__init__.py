"""What every layer may use: bounded file reading, stdout that never raises, the
collector pause and the quick exit of a command."""
