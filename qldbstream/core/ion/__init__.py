"""Ion binary reading and Ion hashing, as the hot path needs them."""
