"""Pure decisions: no I/O, no asyncio, time and randomness passed in."""
