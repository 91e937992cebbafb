"""Worker processes of kube-event-agent: each owns one job and runs only on the leader.

A worker knows its pipe and its settings, never the lease (see ``workers.protocol``).
"""
