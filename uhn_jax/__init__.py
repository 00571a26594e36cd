"""Universal hypernetworks in JAX."""
