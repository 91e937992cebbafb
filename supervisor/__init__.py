"""The supervisor: PID 1 of every agent pod; holds the lease and owns the token."""
