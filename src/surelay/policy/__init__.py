"""Pure rules, no threads and no clocks of their own: retry delays, the circuit breaker,
the verdict on an attempt. Actors and the delivery engine call them; tests check them
directly (hypothesis)."""
