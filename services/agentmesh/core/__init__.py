"""Runtime shared by every agentmesh process: settings, logs, errors, auth, gRPC server."""
