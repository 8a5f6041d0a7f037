"""What an operator does with dead letters: list, get, replay, archive, purge, and
cancelling a replay request. One implementation, called by the API (`rt.dead_letters`),
the CLI (`surelay dlq`) and the console; the store-level functions need no runtime."""
