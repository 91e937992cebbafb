"""``kube-event-agent demo``: the whole story on one machine, no cluster, no API key.

kubesim in-process, the manifests' RBAC and ConfigMap applied, agent replicas as real
processes (``python -m supervisor run``) authenticated as the ``datadog-agent``
ServiceAccount, a stream of realistic events, a local intake counting what arrives, a leader
hand-over partway, and a summary of what was lost or duplicated.

This package may import kubesim, never the agent (``supervisor``, ``workers``): it drives
the agent only as processes, as a user would. Nothing is imported here so that
``python -m demo.launch`` stays cheap.
"""
