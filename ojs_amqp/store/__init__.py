"""Job stores: the authority for state and the index by job id (DESIGN §2)."""
