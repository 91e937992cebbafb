"""kubesim: a local Kubernetes API server emulator for tests and the no-cluster demo."""
